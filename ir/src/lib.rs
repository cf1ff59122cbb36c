//! The policy IR, the packet/flow model and the reference evaluator (the executable spec).
