//! [`ConfineSpec`]: what a session's confinement denies and hides.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the helper installs for one session, as the daemon computed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfineSpec {
    /// Landlock grants write-class access beneath these (and only these) paths: the
    /// complement of the denied set, enumerated along the paths to it. The supervisor
    /// answers CONTINUE only for a target beneath one of them.
    pub write_allowed: Vec<PathBuf>,
    /// Hidden from the session (an empty read-only mount over each in its own mount
    /// namespace): confgate's configuration, credentials and state.
    pub hidden: Vec<PathBuf>,
}
