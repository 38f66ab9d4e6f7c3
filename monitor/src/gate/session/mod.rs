//! The session gate: agent sessions started with `confgate run` are confined at their start
//! by Landlock (write-class access denied beneath the gated trees, confgate's own files
//! hidden, signals and abstract sockets scoped) and a seccomp user-notification filter on
//! the path syscalls, whose listener descriptor is handed to the daemon. The daemon
//! supervises every notified operation: outside the gated set it answers CONTINUE (Landlock
//! backs it); inside, the policy decides, and an approved operation is performed by the
//! daemon on the writer's behalf, never CONTINUEd.
//!
//! - [`spec`]: [`ConfineSpec`], what the daemon tells the helper to install, computed from
//!   the policy's gated set and confgate's protected paths.
//! - [`confine`]: the helper side (`confgate-confine`, setuid root): receives the spec,
//!   installs both mechanisms, hands the listener over, drops privileges, execs.
//! - [`handoff`]: the daemon side of the supervise socket: checks the peer, sends the spec,
//!   receives the listener and attaches it to [`supervisor::Supervisors`].
//! - [`supervisor`]: one thread per session listener: receives notifications, decodes and
//!   resolves them, answers the ones outside the gated set at once and hands the rest to
//!   the engine as held operations.
//! - [`resume`]: what outlives a daemon restart: the listeners in systemd's descriptor
//!   store, the specs in the daemon's store, and pairing them again at start-up.
//! - [`wire`]: the supervise socket's messages.
mod common;
pub mod confine;
pub mod handoff;
pub mod holds;
pub mod ops;
pub mod perform;
mod report;
pub mod resolve;
pub mod resume;
pub mod scope;
pub mod spec;
pub mod supervisor;
pub mod wire;

pub use spec::ConfineSpec;
pub use supervisor::{Attach, Supervisors};
