//! A bare gRPC client of the approval service for the end-to-end tests: it sends one
//! `Decide` that approves REQUEST_ID and claims `decider_session = 0`, without any
//! attestation, the way an agent that read an approver certificate would (issue 21).
//!
//! Usage: `raw_decide https://IP:PORT CA.pem CERT.pem KEY.pem REQUEST_ID`
//! Prints `approved` (exit 0), or `refused: CODE: MESSAGE` (exit 3); other failures exit 2.
use std::process::ExitCode;

use confgate_proto::v1 as pb;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, ca, cert, key, id] = args.as_slice() else {
        eprintln!("usage: raw_decide ENDPOINT CA CERT KEY REQUEST_ID");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(decide(endpoint, ca, cert, key, id)) {
        Ok(Ok(())) => {
            println!("approved");
            ExitCode::SUCCESS
        }
        Ok(Err(status)) => {
            println!("refused: {:?}: {}", status.code(), status.message());
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("raw_decide: {e}");
            ExitCode::from(2)
        }
    }
}

async fn decide(
    endpoint: &str,
    ca: &str,
    cert: &str,
    key: &str,
    id: &str,
) -> Result<Result<(), tonic::Status>, Box<dyn std::error::Error>> {
    let host = endpoint
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or("localhost", |(h, _)| h)
        .to_owned();
    let tls = ClientTlsConfig::new()
        .domain_name(host)
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    let channel = Endpoint::from_shared(endpoint.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = pb::approver_client::ApproverClient::new(channel);
    let r = client
        .decide(pb::DecideRequest {
            id: id.parse()?,
            approve: true,
            ttl_seconds: 600,
            note: "approved from inside the session".into(),
            decider_host: String::new(),
            decider_session: 0,
            ..Default::default()
        })
        .await;
    Ok(r.map(|_| ()))
}
