//! seccomp: the session filter ([`filter`]) and the supervisor's side of its listener
//! ([`notify`]).
pub mod notify;
