//! The daemon side of the supervise socket. Filled in by the confine work.
