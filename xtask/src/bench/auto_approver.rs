//! The auto-approving test approver of scenarios 4 and 5: watches the daemon's local
//! approval service (the real gRPC service, over its Unix socket) and approves every
//! pending request at once, as root outside any session (scenario 13: several at once).
use std::{path::Path, sync::Arc, thread::JoinHandle};

use anyhow::Context as _;
use confgate_proto::v1 as pb;
use monitor::approver::client::{ClientConfig, connect};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

/// Grant lifetime given by the approver.
const TTL_SECS: u64 = 600;

pub struct AutoApprover {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl AutoApprover {
    /// Starts approving requests on the service at `socket`, one at a time; returns once
    /// it watches.
    pub fn start(socket: &Path) -> anyhow::Result<AutoApprover> {
        Self::start_with(socket, 1)
    }

    /// As [`AutoApprover::start`], with up to `inflight` decisions under way at once (a
    /// fleet's approvers decide in parallel; one at a time would measure this approver).
    pub fn start_with(socket: &Path, inflight: usize) -> anyhow::Result<AutoApprover> {
        let cfg = ClientConfig {
            endpoint: format!("unix:{}", socket.display()),
            ..ClientConfig::default()
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut c = connect(&cfg).await.context("connecting to the service")?;
                let mut stream = c
                    .watch_requests(pb::WatchRequestsRequest {})
                    .await
                    .context("WatchRequests")?
                    .into_inner();
                let _ = ready_tx.send(());
                let slots = Arc::new(Semaphore::new(inflight.max(1)));
                let mut decisions = JoinSet::new();
                let mut approved = 0u64;
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        Some(done) = decisions.join_next() => {
                            done.context("a decision task")??;
                            approved += 1;
                        }
                        msg = stream.message() => {
                            let Some(r) = msg.context("request stream")? else {
                                break;
                            };
                            if r.state != pb::RequestState::Pending as i32 {
                                continue;
                            }
                            let slot = slots.clone().acquire_owned().await?;
                            let mut c = c.clone();
                            decisions.spawn(async move {
                                let _slot = slot;
                                c.decide(pb::DecideRequest {
                                    id: r.id,
                                    approve: true,
                                    ttl_seconds: TTL_SECS,
                                    note: "bench auto-approver".into(),
                                    ..Default::default()
                                })
                                .await
                                .context("Decide")
                                .map(drop)
                            });
                        }
                    }
                }
                while let Some(done) = decisions.join_next().await {
                    done.context("a decision task")??;
                    approved += 1;
                }
                Ok(approved)
            })
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .context("the auto-approver could not watch the service")?;
        Ok(AutoApprover {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops it; returns how many requests it approved.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("the auto-approver panicked"),
            None => Ok(0),
        }
    }
}

impl Drop for AutoApprover {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
