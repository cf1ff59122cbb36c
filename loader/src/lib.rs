//! polc's userspace dataplane: loads the runtime and generated programs, fills maps, attaches to tc.
