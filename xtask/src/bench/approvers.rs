//! Scenario 11: approvers where they work. The daemon's local approval service notifies a
//! webhook and Slack (the documented Web API shapes) served by a local HTTPS receiver
//! (`e2e::receiver`: its own CA, one TLS connection per call, as the service makes them);
//! an auto-approver plays the person in Slack: for every `chat.postMessage` it receives it
//! clicks **Approve 15m** at once, a `block_actions` callback signed with the app's
//! signing secret and POSTed to the service's `/slack/interactive`, as Slack does.
//!
//! - **Notification latency**: per request, the webhook's receipt time minus the request's
//!   `created_unix_ms` (the service's clock, in the body): filing, the durable outbox, the
//!   sender, TLS and the POST. Pooled over every request of every round; p50 / p99.
//! - **Approval round trip through Slack**: each timed `open()` (for writing, in a
//!   confined session when the build confines, of a new gated file) is held until the
//!   request reached Slack, the click came back verified, the decision was made and the
//!   open was performed. The off column is the same opens without the daemon.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, ensure};
use e2e::{receiver::Receiver, slack};
use monitor::approver::sinks::slack::interactive::sign;
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario, verdict},
    stats::{Summary, percentiles},
    workload::{self, How, Latency},
};

const SIGNING_SECRET: &str = "bench-slack-signing-secret";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";
/// The Slack user the auto-approver clicks as, and the approver identity it maps to.
const SLACK_USER: &str = "U0BENCH";

/// Target: a person learns of a request within this (p99, webhook receipt).
const NOTIFY_P99_MS: f64 = 250.0;
/// Target: an open held for a Slack click that comes at once (p99).
const ROUND_TRIP_P99_MS: f64 = 500.0;

#[derive(Default)]
pub struct Approvers {
    recv: Option<Receiver>,
    config: Option<PathBuf>,
    /// The service's HTTP port (Slack's callbacks).
    port: u16,
    clicks: Arc<AtomicU64>,
    /// Webhook receipt minus request creation, ms, every request.
    notify_ms: Vec<f64>,
    /// `chat.postMessage` receipt minus request creation, ms, every request.
    slack_ms: Vec<f64>,
    /// Per round and mode: open() latencies.
    opens: Vec<(Mode, Latency)>,
    /// Requests notified so far (the receiver keeps every round's).
    seen: usize,
    /// Timed opens made in sessions (each needs its own approval).
    held: u64,
    service_dir: Option<PathBuf>,
    ca: String,
    recv_url: String,
    /// Daemons started so far (each gets its own service store).
    generation: u32,
}

impl Approvers {
    fn opens(cx: &Cx) -> u64 {
        if cx.plan.quick { 30 } else { 200 }
    }

    /// The round's directory with its files, created outside any session (see scenario 5).
    fn files(cx: &Cx, round: usize) -> anyhow::Result<PathBuf> {
        let dir = cx.dir(true, &format!("approvers/r{round}"))?;
        for i in 0..Self::opens(cx) {
            let p = dir.join(format!("f{i}"));
            if !p.exists() {
                std::fs::write(&p, b"x")?;
            }
        }
        Ok(dir)
    }

    /// Starts the receiver, writes the service's settings and the secrets, and starts the
    /// auto-approver.
    fn prepare(&mut self, cx: &Cx) -> anyhow::Result<String> {
        let recv = Receiver::start();
        let dir = cx.dir(false, "approvers-service")?;
        std::fs::write(dir.join("webhook.key"), WEBHOOK_SECRET)?;
        std::fs::write(dir.join("slack-token"), "xoxb-bench-token")?;
        std::fs::write(dir.join("slack-secret"), SIGNING_SECRET)?;
        self.port = e2e::service::free_port();
        let config = dir.join("approver.toml");
        self.service_dir = Some(dir.clone());
        self.ca = recv.ca_file.display().to_string();
        self.recv_url = recv.url.clone();
        self.write_config(&config)?;
        let (port, recv_url, clicks) = (self.port, recv.url.clone(), Arc::clone(&self.clicks));
        recv.on_request(move |r| {
            if r.path != "/api/chat.postMessage" {
                return;
            }
            let Some(id) = slack::request_id_of(r) else {
                return;
            };
            let body = slack::form_body(&slack::button_click(
                SLACK_USER,
                "approve_15m",
                id,
                &recv_url,
            ));
            let ts = now_ms().div_euclid(1000).to_string();
            let sig = sign(SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
            match slack::post_interactive(port, &body, &ts, &sig) {
                Ok((200, _)) => {
                    clicks.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, text)) => eprintln!("scenario 11: click on {id}: {status} {text}"),
                Err(e) => eprintln!("scenario 11: click on {id}: {e}"),
            }
        });
        self.recv = Some(recv);
        self.config = Some(config);
        let files = (0..cx.plan.rounds)
            .map(|round| Self::files(cx, round))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let root = files
            .first()
            .and_then(|f| f.parent())
            .context("no rounds")?
            .display()
            .to_string();
        Ok(format!(
            "[[gate.rule]]\nname = \"bench-approvers\"\npaths = [\"{root}/**\"]\nverdict = \"ask\"\ntimeout = \"20s\"\n"
        ))
    }

    /// The service's settings, with a store and ledger of their own for each daemon (a
    /// new daemon's request ids start again; the service must not know the old ones).
    fn write_config(&self, config: &std::path::Path) -> anyhow::Result<()> {
        let dir = self.service_dir.as_ref().context("not prepared")?;
        let (d, url, ca, g) = (dir.display(), &self.recv_url, &self.ca, self.generation);
        std::fs::write(
            config,
            format!(
                "listen = [\"unix:{d}/approver.sock\"]\nstore = \"{d}/state-{g}/approver.redb\"\n\
                 ledger = \"{d}/state-{g}/ledger.jsonl\"\nallow_plaintext = true\n\
                 [http]\nlisten = \"http://127.0.0.1:{port}\"\n\
                 [[notify.webhook]]\nname = \"bench\"\nurl = \"{url}/hook\"\nsecret_file = \"{d}/webhook.key\"\nca_file = \"{ca}\"\n\
                 [[notify.slack]]\nchannel = \"#ops\"\nbot_token_file = \"{d}/slack-token\"\n\
                 signing_secret_file = \"{d}/slack-secret\"\napi_base_url = \"{url}/api\"\nca_file = \"{ca}\"\n\
                 users = {{ \"{SLACK_USER}\" = \"bench-approver\" }}\n",
                port = self.port
            ),
        )?;
        Ok(())
    }

    /// Delivery latencies of the requests notified since the last call.
    fn collect(&mut self) {
        let Some(recv) = &self.recv else {
            return;
        };
        let all = recv.requests();
        for r in &all[self.seen.min(all.len())..] {
            let body: Value = r.json();
            if r.path != "/hook" || r.header("x-confgate-event") != Some("request.created") {
                continue;
            }
            let Some(created) = body["request"]["created_unix_ms"].as_i64() else {
                continue;
            };
            let at = unix_ms(r.received);
            self.notify_ms.push((at - created) as f64);
            // The same request's Slack message, if it came (ids start again with each
            // daemon's service: the first post for this id at or after its creation).
            let id = body["request"]["id"].as_u64();
            if let Some(post_ms) = all
                .iter()
                .filter(|p| p.path == "/api/chat.postMessage" && slack::request_id_of(p) == id)
                .map(|p| unix_ms(p.received))
                .filter(|at| *at >= created)
                .min()
            {
                self.slack_ms.push((post_ms - created) as f64);
            }
        }
        self.seen = all.len();
    }
}

impl Approvers {
    /// The per-round percentile `f` of the timed opens in mode `m`, in ms.
    fn opens_ms(&self, m: Mode, f: fn(&Latency) -> f64) -> Summary {
        Summary::of(
            self.opens
                .iter()
                .filter(|(mode, _)| *mode == m)
                .map(|(_, l)| f(l) / 1e6)
                .collect(),
        )
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

impl Scenario for Approvers {
    fn id(&self) -> u32 {
        11
    }

    fn key(&self) -> &'static str {
        "scenario11_approvers"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Off, Mode::Notify]
    }

    fn daemon_toml(&mut self, cx: &Cx) -> Option<String> {
        match self.prepare(cx) {
            Ok(rule) => Some(rule),
            Err(e) => {
                eprintln!("scenario 11: cannot prepare: {e:#}");
                None
            }
        }
    }

    fn approval_config(&self) -> Option<PathBuf> {
        self.config.clone()
    }

    fn daemon_stopped(&mut self, mode: Mode, _took_ms: f64) {
        if mode != Mode::Notify {
            return;
        }
        self.generation += 1;
        if let Some(c) = self.config.clone()
            && let Err(e) = self.write_config(&c)
        {
            eprintln!("scenario 11: cannot rewrite the service's settings: {e:#}");
        }
    }

    fn measure(
        &mut self,
        cx: &Cx,
        round: usize,
        mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        let dir = Self::files(cx, round)?;
        let n = Self::opens(cx);
        let how = How {
            read: false,
            no_confine: false,
            seccomp: None,
        };
        let l = workload::latency(cx, &dir, n, n, 0, daemon, how).with_context(|| {
            let log = daemon.map(Daemon::log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("the daemon's log ends:\n{}", tail.join("\n"))
        })?;
        self.opens.push((mode, l));
        if mode == Mode::Notify {
            self.held += n;
            // The last webhook calls may still be on their way.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let want = self.notify_ms.len() + n as usize;
            loop {
                self.collect();
                if self.notify_ms.len() >= want || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn results(&self) -> Value {
        let per = |m: Mode, f: fn(&Latency) -> f64| self.opens_ms(m, f);
        let (n50, n99) = percentiles(&self.notify_ms);
        let (s50, s99) = percentiles(&self.slack_ms);
        json!({
            "clicks": self.clicks.load(Ordering::Relaxed),
            "notify_webhook_ms": { "p50": n50, "p99": n99, "n": self.notify_ms.len() },
            "notify_slack_ms": { "p50": s50, "p99": s99, "n": self.slack_ms.len() },
            "round_trip_ms": {
                "off_p50": per(Mode::Off, |l| l.p50_ns),
                "off_p99": per(Mode::Off, |l| l.p99_ns),
                "p50": per(Mode::Notify, |l| l.p50_ns),
                "p99": per(Mode::Notify, |l| l.p99_ns),
                "p999": per(Mode::Notify, |l| l.p999_ns),
            },
        })
    }

    fn rows(&self) -> Vec<Row> {
        let ms = |m: Mode, f: fn(&Latency) -> f64| self.opens_ms(m, f);
        let (n50, n99) = percentiles(&self.notify_ms);
        let (s50, s99) = percentiles(&self.slack_ms);
        let on99 = ms(Mode::Notify, |l| l.p99_ns);
        vec![
            Row {
                scenario: "11 notification latency".into(),
                measure: format!(
                    "request filed → received, p50 / p99 over {} requests: webhook; Slack chat.postMessage",
                    self.notify_ms.len()
                ),
                on: format!("{n50:.0} / {n99:.0} ms; {s50:.0} / {s99:.0} ms"),
                target: format!("webhook p99 < {NOTIFY_P99_MS:.0} ms"),
                verdict: verdict(n99 < NOTIFY_P99_MS),
                ..Row::default()
            },
            Row {
                scenario: "11 approval round trip through Slack (auto-approver clicks at once)"
                    .into(),
                measure: "open() held for Slack: p50 / p99 / p99.9 (off: without the daemon)"
                    .into(),
                off: format!(
                    "{} / {}",
                    ms(Mode::Off, |l| l.p50_ns).show("ms", 3),
                    ms(Mode::Off, |l| l.p99_ns).show("ms", 3)
                ),
                on: format!(
                    "{} / {} / {}",
                    ms(Mode::Notify, |l| l.p50_ns).show("ms", 1),
                    on99.show("ms", 1),
                    ms(Mode::Notify, |l| l.p999_ns).show("ms", 1)
                ),
                target: format!("p99 < {ROUND_TRIP_P99_MS:.0} ms"),
                verdict: verdict(on99.median < ROUND_TRIP_P99_MS),
                ..Row::default()
            },
        ]
    }

    fn check(&self) -> anyhow::Result<()> {
        let on = self
            .opens
            .iter()
            .filter(|(m, _)| *m == Mode::Notify)
            .count();
        ensure!(on > 0, "scenario 11: no round trips measured");
        // Every timed open was held for its own request and click (no grant covered the
        // next file), and every request reached the webhook.
        let clicks = self.clicks.load(Ordering::Relaxed);
        ensure!(
            clicks >= self.held && self.held > 0,
            "scenario 11: {clicks} clicks for {} held opens",
            self.held
        );
        ensure!(
            self.notify_ms.len() as u64 >= self.held,
            "scenario 11: {} webhook calls for {} held opens",
            self.notify_ms.len(),
            self.held
        );
        ensure!(
            !self.notify_ms.is_empty(),
            "scenario 11: no webhook notification received"
        );
        Ok(())
    }
}
