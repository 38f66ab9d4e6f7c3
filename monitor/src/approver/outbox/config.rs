//! `[notify]` of approver.toml: the notification sinks and the outbox's retry limits.
//! Secrets (webhook keys, Slack tokens, Teams webhook URLs) are read from files only.
//!
//! ```toml
//! [notify]
//! max_age_secs = 86400        # give a notification up (ledgered) after this long
//! max_backoff_secs = 300      # longest pause between two attempts
//! [[notify.webhook]]
//! name = "siem"
//! url = "https://siem.example.com/confgate"
//! secret_file = "/etc/confgate/webhook-siem.key"
//! events = ["request.*", "host.*"]
//! [[notify.slack]]
//! channel = "#ops"            # name defaults to the channel: rules say "slack:#ops"
//! bot_token_file = "/etc/confgate/slack-bot-token"
//! signing_secret_file = "/etc/confgate/slack-signing-secret"
//! users = { "U0123ABCD" = "alice" }
//! [[notify.teams]]
//! name = "ops"
//! url_file = "/etc/confgate/teams-workflow-url"
//! approvers = ["alice", "bob"]  # each gets a signed link to the web page on every card
//! ```
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EVENTS;
use super::route::{Route, pattern_matches};
use crate::config::toml_check::Checker;

/// Default `max_age_secs`: one day.
const DEFAULT_MAX_AGE_SECS: u64 = 24 * 3600;
/// Default `max_backoff_secs`: five minutes.
const DEFAULT_MAX_BACKOFF_SECS: u64 = 300;
/// Default per-sink `timeout_secs`.
const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// The events a sink gets when its `events` is not set: requests, decisions, revocations
/// and what needs a person's eye on a host (not session ends and policy denials).
pub const DEFAULT_EVENTS: &[&str] = &[
    "request.*",
    "grant.revoked",
    "host.change_flagged",
    "host.unapproved_rename",
    "host.reverted",
    "host.revert_failed",
    "host.released_by_crash",
    "host.fallback_verdict",
];

/// `[notify]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySection {
    /// A notification not delivered after this many seconds is given up and ledgered
    /// (`notify_failed`).
    pub max_age_secs: u64,
    /// Longest pause between two attempts of one notification, in seconds.
    pub max_backoff_secs: u64,
    pub webhook: Vec<WebhookSink>,
    pub slack: Vec<SlackSink>,
    pub teams: Vec<TeamsSink>,
}

impl Default for NotifySection {
    fn default() -> Self {
        NotifySection {
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            max_backoff_secs: DEFAULT_MAX_BACKOFF_SECS,
            webhook: Vec::new(),
            slack: Vec::new(),
            teams: Vec::new(),
        }
    }
}

/// `[[notify.webhook]]`: JSON POSTs signed with HMAC-SHA256.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSink {
    /// Rules route to it as `webhook:<name>`.
    pub name: String,
    /// `https://...` (or `http://` on a loopback address).
    pub url: String,
    /// File holding the HMAC key (trailing newline ignored).
    pub secret_file: PathBuf,
    /// Event names or `prefix.*` patterns; default [`DEFAULT_EVENTS`].
    pub events: Option<Vec<String>>,
    pub timeout_secs: u64,
    /// PEM CA certificates that sign the receiver's certificate; default the system's.
    pub ca_file: Option<PathBuf>,
}

/// `[[notify.slack]]`: a Slack app's bot posting to one channel.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSink {
    /// Rules route to it as `slack:<name>`; default the channel (`slack:#ops`).
    pub name: Option<String>,
    /// Channel name (`#ops`) or id (`C0123...`) the bot posts to (it must be a member).
    pub channel: String,
    /// File holding the bot token (`xoxb-...`).
    pub bot_token_file: PathBuf,
    /// File holding the app's signing secret (interactive callbacks are verified with it).
    pub signing_secret_file: PathBuf,
    /// Slack user id → approver identity: who may decide from Slack.
    pub users: BTreeMap<String, String>,
    /// Web API base; default `https://slack.com/api`.
    pub api_base_url: String,
    pub events: Option<Vec<String>>,
    pub timeout_secs: u64,
    pub ca_file: Option<PathBuf>,
}

/// `[[notify.teams]]`: Adaptive Cards to a Teams Workflows (or incoming-webhook) URL.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsSink {
    /// Rules route to it as `teams:<name>`.
    pub name: String,
    /// File holding the workflow's URL (it carries its own credential).
    pub url_file: PathBuf,
    /// Approver identities that get a signed action link on each request card (links
    /// need the web page: `[http] listen`).
    pub approvers: Vec<String>,
    pub events: Option<Vec<String>>,
    pub timeout_secs: u64,
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhookSink {
    fn default() -> Self {
        WebhookSink {
            name: String::new(),
            url: String::new(),
            secret_file: PathBuf::new(),
            events: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            ca_file: None,
        }
    }
}

impl Default for SlackSink {
    fn default() -> Self {
        SlackSink {
            name: None,
            channel: String::new(),
            bot_token_file: PathBuf::new(),
            signing_secret_file: PathBuf::new(),
            users: BTreeMap::new(),
            api_base_url: "https://slack.com/api".to_owned(),
            events: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            ca_file: None,
        }
    }
}

impl Default for TeamsSink {
    fn default() -> Self {
        TeamsSink {
            name: String::new(),
            url_file: PathBuf::new(),
            approvers: Vec::new(),
            events: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            ca_file: None,
        }
    }
}

impl SlackSink {
    /// What rules call it: `name`, else the channel.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.channel)
    }

    /// `slack:<name>`.
    pub fn id(&self) -> String {
        format!("slack:{}", self.name())
    }
}

impl WebhookSink {
    pub fn id(&self) -> String {
        format!("webhook:{}", self.name)
    }
}

impl TeamsSink {
    pub fn id(&self) -> String {
        format!("teams:{}", self.name)
    }
}

fn events_or_default(e: &Option<Vec<String>>) -> Vec<String> {
    match e {
        Some(v) => v.clone(),
        None => DEFAULT_EVENTS.iter().map(|s| (*s).to_owned()).collect(),
    }
}

impl NotifySection {
    /// The routes of every configured sink.
    pub fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for w in &self.webhook {
            out.push(Route {
                id: w.id(),
                aliases: Vec::new(),
                events: events_or_default(&w.events),
            });
        }
        for s in &self.slack {
            out.push(Route {
                id: s.id(),
                aliases: vec![format!("slack:{}", s.channel)],
                events: events_or_default(&s.events),
            });
        }
        for t in &self.teams {
            out.push(Route {
                id: t.id(),
                aliases: Vec::new(),
                events: events_or_default(&t.events),
            });
        }
        out
    }

    /// Adds every problem of `[notify]` to `c`, with fields such as `notify.slack[0].users`.
    pub(crate) fn check(&self, c: &mut Checker) {
        if !(60..=30 * 24 * 3600).contains(&self.max_age_secs) {
            c.fail(
                "notify.max_age_secs",
                "must be between 60 and 2592000 (30 days)",
            );
        }
        if !(1..=3600).contains(&self.max_backoff_secs) {
            c.fail("notify.max_backoff_secs", "must be between 1 and 3600");
        }
        let mut ids: Vec<String> = Vec::new();
        let mut common = |c: &mut Checker,
                          field: String,
                          id: String,
                          name: &str,
                          events: &Option<Vec<String>>,
                          timeout: u64,
                          ca: &Option<PathBuf>| {
            if !is_sink_name(name) {
                c.fail(
                    &format!("{field}.name"),
                    format!("{name:?} is not a sink name (1-64 characters: letters, digits, `#`, `.`, `_`, `-`)"),
                );
            } else if ids.contains(&id) {
                c.fail(
                    &format!("{field}.name"),
                    format!("{id} is configured twice"),
                );
            }
            ids.push(id);
            if let Some(list) = events {
                for (i, p) in list.iter().enumerate() {
                    if !EVENTS.iter().any(|e| pattern_matches(p, e)) {
                        c.fail(
                            &format!("{field}.events[{i}]"),
                            format!("{p:?} matches no event (known: {})", EVENTS.join(", ")),
                        );
                    }
                }
            }
            if !(1..=120).contains(&timeout) {
                c.fail(
                    &format!("{field}.timeout_secs"),
                    "must be between 1 and 120",
                );
            }
            if let Some(p) = ca {
                c.abs_path(&format!("{field}.ca_file"), p);
            }
        };
        for (i, w) in self.webhook.iter().enumerate() {
            let f = format!("notify.webhook[{i}]");
            common(
                c,
                f.clone(),
                w.id(),
                &w.name,
                &w.events,
                w.timeout_secs,
                &w.ca_file,
            );
            check_url(c, &format!("{f}.url"), &w.url);
            c.abs_path(&format!("{f}.secret_file"), &w.secret_file);
        }
        for (i, s) in self.slack.iter().enumerate() {
            let f = format!("notify.slack[{i}]");
            common(
                c,
                f.clone(),
                s.id(),
                s.name(),
                &s.events,
                s.timeout_secs,
                &s.ca_file,
            );
            if s.channel.is_empty() || s.channel.contains(char::is_whitespace) {
                c.fail(
                    &format!("{f}.channel"),
                    "set it to the channel's name (#ops) or id",
                );
            }
            check_url(c, &format!("{f}.api_base_url"), &s.api_base_url);
            c.abs_path(&format!("{f}.bot_token_file"), &s.bot_token_file);
            c.abs_path(&format!("{f}.signing_secret_file"), &s.signing_secret_file);
            for (user, who) in &s.users {
                if !is_slack_user_id(user) {
                    c.fail(
                        &format!("{f}.users"),
                        format!("{user:?} is not a Slack user id (U or W, then capital letters and digits)"),
                    );
                }
                if who.is_empty() || who.len() > 128 || who.contains(char::is_control) {
                    c.fail(
                        &format!("{f}.users"),
                        format!("{user}: {who:?} is not an approver identity"),
                    );
                }
            }
        }
        for (i, t) in self.teams.iter().enumerate() {
            let f = format!("notify.teams[{i}]");
            common(
                c,
                f.clone(),
                t.id(),
                &t.name,
                &t.events,
                t.timeout_secs,
                &t.ca_file,
            );
            c.abs_path(&format!("{f}.url_file"), &t.url_file);
            for (j, a) in t.approvers.iter().enumerate() {
                if a.is_empty() || a.len() > 256 || a.contains(char::is_control) {
                    c.fail(
                        &format!("{f}.approvers[{j}]"),
                        format!("{a:?} is not an approver identity"),
                    );
                }
            }
        }
    }
}

fn is_sink_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'#' | b'.' | b'_' | b'-'))
}

fn is_slack_user_id(u: &str) -> bool {
    u.len() >= 2
        && (u.starts_with('U') || u.starts_with('W'))
        && u.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// An `https://` URL, or `http://` to a loopback address.
fn check_url(c: &mut Checker, field: &str, url: &str) {
    if let Err(e) = url_problem(url) {
        c.fail(field, e);
    }
}

/// Why `url` is not acceptable as a sink's address.
pub fn url_problem(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} names no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            match ip.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => Ok(()),
                _ => Err(format!(
                    "{url:?}: plain http is allowed to a loopback address only; use https"
                )),
            }
        }
        _ => Err(format!("{url:?} is not an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use super::NotifySection;
    use crate::config::toml_check::{Checker, ConfigError, parse_checked};

    /// `[notify]` as approver.toml has it.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        notify: NotifySection,
    }

    fn problems(f: &File) -> Vec<ConfigError> {
        let mut c = Checker::default();
        f.notify.check(&mut c);
        c.problems
    }

    fn parse(text: &str) -> Result<File, Vec<ConfigError>> {
        parse_checked(text, Path::new("approver.toml"), problems)
    }

    #[test]
    fn sinks_parse_with_defaults_and_route_by_name() {
        let text = r##"
[notify]
[[notify.webhook]]
name = "siem"
url = "https://siem.example/in"
secret_file = "/etc/confgate/siem.key"
events = ["request.*"]
[[notify.slack]]
channel = "#ops"
bot_token_file = "/etc/confgate/slack-token"
signing_secret_file = "/etc/confgate/slack-secret"
users = { "U0123ABCD" = "alice" }
[[notify.teams]]
name = "ops"
url_file = "/etc/confgate/teams-url"
"##;
        let cfg = parse(text).unwrap();
        let n = &cfg.notify;
        assert_eq!(n.max_age_secs, 86400);
        assert_eq!(n.slack[0].api_base_url, "https://slack.com/api");
        assert_eq!(n.slack[0].id(), "slack:#ops");
        let ids: Vec<String> = n.routes().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["webhook:siem", "slack:#ops", "teams:ops"]);
    }

    #[test]
    fn problems_name_their_line_and_column() {
        let text = "[notify]\nmax_backoff_secs = 0\n[[notify.webhook]]\nname = \"a b\"\nurl = \"http://example.com/x\"\nsecret_file = \"rel/key\"\nevents = [\"nope.*\"]\n[[notify.slack]]\nchannel = \"#ops\"\nbot_token_file = \"/t\"\nsigning_secret_file = \"/s\"\nusers = { \"alice\" = \"alice\" }\n";
        let errs = parse(text).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let find = |needle: &str| {
            msgs.iter()
                .find(|m| m.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {msgs:#?}"))
                .clone()
        };
        assert!(find("notify.max_backoff_secs").starts_with("approver.toml:2:"));
        assert!(find("notify.webhook[0].name").starts_with("approver.toml:4:"));
        assert!(find("loopback address only").starts_with("approver.toml:5:"));
        assert!(find("notify.webhook[0].secret_file").starts_with("approver.toml:6:"));
        assert!(find("matches no event").starts_with("approver.toml:7:"));
        assert!(find("not a Slack user id").starts_with("approver.toml:12:"));
        // Unknown keys are errors with their position too.
        let e = parse("[notify.slack2]\n").unwrap_err();
        assert!(e[0].to_string().starts_with("approver.toml:1:"), "{e:?}");
    }
}
