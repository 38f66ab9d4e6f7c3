//! `confgate grants list|revoke`: the grants approvals created, and ending one early.
//!
//! Connection options are shared with `approvals` ([`super::connect`]); what a grant looks
//! like is [`super::render::grants`].
use std::io::Write;

use anyhow::anyhow;
use clap::Subcommand;

use super::connect::{ApproverArgs, check_note, explain, runtime, service};
use super::render::grants::{grant_json, grant_summary, render_list};
use super::render::print_list;
use crate::approver::client::ApproverChannel;
use crate::config::Config;
use crate::os::clock::now_ms;
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

/// The `grants` subcommands.
#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List grants (live ones unless --all).
    List {
        /// Include expired and revoked grants.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// End a live grant now; the host applies the rule's on_expiry action (flag or revert).
    Revoke {
        id: u64,
        /// Why (kept in both ledgers).
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `grants` subcommand. Returns the exit status.
pub fn run(cmd: &GrantsCommand, conn: &ApproverArgs, cfg: &Config) -> anyhow::Result<i32> {
    let client_cfg = conn.client_config(cfg.approval.client_config());
    if let GrantsCommand::Revoke {
        note: Some(note), ..
    } = cmd
    {
        check_note(note)?;
    }
    runtime()?.block_on(async {
        let mut c = service(&client_cfg).await?;
        let mut out = std::io::stdout().lock();
        match cmd {
            GrantsCommand::List { all, json } => {
                list(&mut c, *all, *json, now_ms(), &mut out).await
            }
            GrantsCommand::Revoke { id, note, json } => {
                revoke(
                    &mut c,
                    *id,
                    note.as_deref().unwrap_or_default(),
                    *json,
                    now_ms(),
                    &mut out,
                )
                .await
            }
        }?;
        Ok(0)
    })
}

/// `grants list`.
pub async fn list(
    c: &mut ApproverClient<ApproverChannel>,
    all: bool,
    json: bool,
    now_ms: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let reply = c
        .list_grants(pb::ListGrantsRequest { all })
        .await
        .map_err(|s| anyhow!(explain(&s)))?
        .into_inner();
    print_list(&reply.grants, json, grant_json, out, || {
        render_list(&reply.grants, all, now_ms)
    })
}

/// `grants revoke ID`.
pub async fn revoke(
    c: &mut ApproverClient<ApproverChannel>,
    id: u64,
    note: &str,
    json: bool,
    now_ms: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    check_note(note)?;
    let g = c
        .revoke_grant(pb::RevokeGrantRequest {
            id,
            note: note.to_owned(),
        })
        .await
        .map_err(|s| anyhow!("grant {id}: {}", explain(&s)))?
        .into_inner();
    if json {
        writeln!(out, "{}", grant_json(&g))?;
    } else {
        writeln!(out, "revoked grant {}", grant_summary(&g, now_ms))?;
    }
    out.flush()?;
    Ok(())
}
