//! The store table of session records, declared next to its record type. The table's
//! name is [`crate::store::SESSIONS_TABLE`], owned by the store so that it creates the table
//! when it opens (readers never see it missing) without knowing the session registry.
use super::SessionInfo;
use crate::store::{RecordTable, SESSIONS_TABLE};

/// Agent sessions, by session id.
pub const SESSIONS: RecordTable<SessionInfo> = RecordTable::new(SESSIONS_TABLE);

/// Sequence name of session ids.
pub const SESSION_IDS: &str = "session_id";
