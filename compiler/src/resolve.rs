//! Resolution: endpoints, selectors -> endpoint/network-set sets, named ports -> numbers.
