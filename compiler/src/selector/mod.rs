//! Calico selector expressions: parser, canonical printer, evaluator.
