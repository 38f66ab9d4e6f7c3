//! `confgate mcp`: a Model Context Protocol server over stdio, for agents (Claude Code and
//! other MCP clients start it as a subprocess). JSON-RPC 2.0, one message per line on
//! stdin and stdout (logs go to stderr). Methods: `initialize`,
//! `notifications/initialized`, `ping`, `tools/list`, `tools/call`; tools:
//! `propose_change`, `request_status`, `list_my_requests` (the daemon's `Propose`,
//! `GetProposal`, `ListProposals`: the server runs in the agent's session, so every call
//! is the session's own, as the kernel says).
//!
//! A small loop over `serde_json` rather than the `rmcp` SDK: five methods and three
//! tools, no transport but stdio, and no new dependency tree for the one binary.
//! Every line is untrusted input: malformed JSON, a wrong shape, an unknown method or a
//! line longer than [`MAX_LINE`] is answered with a JSON-RPC error, never a crash; tool
//! calls run concurrently (a `wait` does not block `ping`).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use super::propose;

/// Longest message line (1 MiB of content, JSON-escaped, and the rest).
pub const MAX_LINE: usize = 8 * 1024 * 1024;
/// Protocol versions this server speaks, newest first.
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn result(id: Value, r: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": r})
}

/// The tools, as `tools/list` describes them.
pub fn tools() -> Value {
    json!([
        {
            "name": "propose_change",
            "title": "Propose a configuration change",
            "description": "Propose the complete new content of one configuration file (under the host's watched or gated trees, e.g. /etc). A person sees the diff and approves or denies it; on approval confgate writes it atomically, keeping the file's mode and owner, unless the file changed in the meantime (outcome \"conflict\"). Returns the proposal with its id; with wait=true, blocks until decided and returns the outcome: applied, denied, conflict or expired.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Absolute path of the file to change or create."},
                    "content": {"type": "string", "description": "The complete new content of the file (UTF-8 text, at most 1 MiB)."},
                    "reason": {"type": "string", "description": "Why the change is needed; approvers read it."},
                    "wait": {"type": "boolean", "description": "Wait for the decision and return the outcome (default false)."},
                    "ttl_seconds": {"type": "integer", "minimum": 10, "description": "How long approvers have (default: the host's request TTL)."}
                },
                "required": ["path", "content", "reason"],
                "additionalProperties": false
            }
        },
        {
            "name": "request_status",
            "title": "Status of a proposal",
            "description": "The state of one of this session's proposals: pending, applied, denied, conflict, expired, rejected or failed, with who decided and why it was not applied. With wait=true, waits (up to 60 s) for a decision.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "description": "The proposal id propose_change returned."},
                    "wait": {"type": "boolean", "description": "Wait up to 60 s for a decision."}
                },
                "required": ["id"],
                "additionalProperties": false
            }
        },
        {
            "name": "list_my_requests",
            "title": "This session's proposals",
            "description": "Every proposal this agent session made, newest first, with its state.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false}
        }
    ])
}

/// A tool's answer: text for the model, the proposal(s) as structured content.
fn tool_ok(text: String, structured: Value) -> Value {
    json!({"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": false})
}

fn tool_error(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

fn arg_str<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("argument {name:?} (a string) is required"))
}

fn arg_bool(args: &Value, name: &str) -> Result<bool, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("argument {name:?} must be a boolean")),
    }
}

fn arg_u64(args: &Value, name: &str) -> Result<Option<u64>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("argument {name:?} must be a non-negative integer")),
    }
}

/// Runs tool `name`; `Err` is a JSON-RPC error (unknown tool, bad arguments), `Ok` a
/// tool result (which may say `isError` when the daemon refused).
async fn call_tool(socket: &Path, name: &str, args: &Value) -> Result<Value, (i64, String)> {
    let bad = |m: String| (INVALID_PARAMS, m);
    if !args.is_object() {
        return Err(bad("arguments must be an object".into()));
    }
    match name {
        "propose_change" => {
            let path = arg_str(args, "path").map_err(bad)?;
            let content = arg_str(args, "content").map_err(bad)?;
            let reason = arg_str(args, "reason").map_err(bad)?;
            let wait = arg_bool(args, "wait").map_err(bad)?;
            let ttl = arg_u64(args, "ttl_seconds").map_err(bad)?;
            if !path.starts_with('/') {
                return Err(bad("path must be absolute".into()));
            }
            let filed = propose::file(
                socket,
                path.as_bytes().to_vec(),
                content.as_bytes().to_vec(),
                reason.to_owned(),
                ttl.map(Duration::from_secs),
            )
            .await;
            let p = match filed {
                Ok(p) => p,
                Err(e) => return Ok(tool_error(format!("{e:#}"))),
            };
            let p = if wait {
                match propose::wait(socket, p.id).await {
                    Ok(p) => p,
                    Err(e) => return Ok(tool_error(format!("{e:#}"))),
                }
            } else {
                p
            };
            Ok(tool_ok(propose::summary(&p), propose::to_json(&p)))
        }
        "request_status" => {
            let id = arg_u64(args, "id")
                .map_err(bad)?
                .ok_or_else(|| bad("argument \"id\" (an integer) is required".into()))?;
            let wait = arg_bool(args, "wait").map_err(bad)?;
            match propose::status(socket, id, if wait { 60_000 } else { 0 }).await {
                Ok(p) => Ok(tool_ok(propose::summary(&p), propose::to_json(&p))),
                Err(e) => Ok(tool_error(format!("{e:#}"))),
            }
        }
        "list_my_requests" => match propose::list(socket).await {
            Ok(ps) => {
                let text = if ps.is_empty() {
                    "no proposals from this session".to_owned()
                } else {
                    ps.iter()
                        .map(propose::summary)
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let list: Vec<Value> = ps.iter().map(propose::to_json).collect();
                Ok(tool_ok(text, json!({"proposals": list})))
            }
            Err(e) => Ok(tool_error(format!("{e:#}"))),
        },
        other => Err((
            INVALID_PARAMS,
            format!(
                "unknown tool {:?}",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// The answer to one message (`None`: a notification, or nothing to say).
pub async fn handle(socket: &Path, msg: Value) -> Option<Value> {
    let Value::Object(m) = msg else {
        return Some(error(
            Value::Null,
            INVALID_REQUEST,
            "a message is one JSON object (batches are not supported)",
        ));
    };
    let id = m.get("id").cloned();
    // A valid id is a string or a number; anything else is answered with a null id.
    let reply_id = match &id {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error(reply_id, INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let Some(method) = m.get("method").and_then(Value::as_str) else {
        // A response from the client (we send no requests) or garbage.
        if m.contains_key("result") || m.contains_key("error") {
            return None;
        }
        return Some(error(reply_id, INVALID_REQUEST, "no method"));
    };
    // Notifications (no id: initialized, cancelled, ...) need no answer.
    id.as_ref()?;
    if matches!(
        id,
        Some(Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_))
    ) {
        return Some(error(
            Value::Null,
            INVALID_REQUEST,
            "id must be a string or a number",
        ));
    }
    let params = m.get("params").cloned().unwrap_or(Value::Null);
    let r = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| VERSIONS.contains(v))
                .unwrap_or(VERSIONS[0]);
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "confgate", "title": "confgate proposals", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "Configuration under the host's gated trees (e.g. /etc) cannot be written directly from this session. Use propose_change with the complete new file content and a reason; a person approves or denies it, and confgate applies it atomically. Use request_status or wait=true for the outcome."
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Some(error(
                    reply_id,
                    INVALID_PARAMS,
                    "params.name (the tool) is required",
                ));
            };
            let args = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            match call_tool(socket, name, &args).await {
                Ok(r) => r,
                Err((code, msg)) => return Some(error(reply_id, code, msg)),
            }
        }
        other => {
            return Some(error(
                reply_id,
                METHOD_NOT_FOUND,
                format!(
                    "method not found: {:?}",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
    };
    Some(result(reply_id, r))
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(None)` at the end of input,
/// `Ok(Some(Err(n)))` for a longer line (its `n` bytes read and dropped).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Result<Vec<u8>, usize>>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
        // Drop the rest of the line.
        let mut dropped = line.len();
        loop {
            let mut rest = Vec::new();
            let m = (&mut *r)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut rest)
                .await?;
            dropped += m;
            if m == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(dropped)));
    }
    Ok(Some(Ok(line)))
}

/// `confgate mcp`: serves until stdin ends; every answer a line on stdout.
pub fn serve(socket: &Path) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve_io(
        socket.to_owned(),
        tokio::io::BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
    ))?;
    Ok(0)
}

/// Serves `input` to `output` until `input` ends and every answer is written.
pub async fn serve_io<R, W>(socket: PathBuf, mut input: R, mut output: W) -> anyhow::Result<()>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let socket = Arc::new(socket);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        while let Some(v) = rx.recv().await {
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                return;
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = read_line(&mut input).await.context("reading stdin")? {
        while tasks.try_join_next().is_some() {}
        let line = match line {
            Ok(l) => l,
            Err(n) => {
                let _ = tx.send(error(
                    Value::Null,
                    INVALID_REQUEST,
                    format!("message of {n} bytes is longer than {MAX_LINE} bytes"),
                ));
                continue;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(error(Value::Null, PARSE_ERROR, format!("parse error: {e}")));
                continue;
            }
        };
        let (socket, tx) = (Arc::clone(&socket), tx.clone());
        tasks.spawn(async move {
            if let Some(answer) = handle(&socket, msg).await {
                let _ = tx.send(answer);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(input: &str) -> Vec<Value> {
        let socket = PathBuf::from("/nonexistent/confgate-test.sock");
        let (w, mut r) = tokio::io::duplex(1 << 20);
        serve_io(socket, tokio::io::BufReader::new(input.as_bytes()), w)
            .await
            .unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn by_id(out: &[Value], id: i64) -> &Value {
        out.iter().find(|v| v["id"] == id).unwrap()
    }

    #[tokio::test]
    async fn speaks_the_protocol_and_never_crashes_on_garbage() {
        let input = concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
            "\n",
            "{not json\n",
            "\n",
            r#"{"jsonrpc":"2.0","id":4,"method":"resources/list"}"#,
            "\n",
            r#"[{"jsonrpc":"2.0","id":5,"method":"ping"}]"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"propose_change","arguments":{"path":"/etc/x"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"list_my_requests","arguments":{}}}"#,
            "\n",
            r#"{"id":9,"method":"ping"}"#,
            "\n",
            "\u{0}\u{1}\u{ff}\n",
        );
        let out = roundtrip(input).await;
        let init = by_id(&out, 1);
        assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(init["result"]["serverInfo"]["name"], "confgate");
        let names: Vec<&str> = by_id(&out, 2)["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["propose_change", "request_status", "list_my_requests"]
        );
        assert_eq!(by_id(&out, 3)["result"], json!({}));
        assert_eq!(by_id(&out, 4)["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(by_id(&out, 6)["error"]["code"], INVALID_PARAMS);
        assert_eq!(by_id(&out, 7)["error"]["code"], INVALID_PARAMS);
        // No daemon at that socket: a tool error, not a protocol error.
        let listed = by_id(&out, 8);
        assert_eq!(listed["result"]["isError"], true, "{listed}");
        assert_eq!(by_id(&out, 9)["error"]["code"], INVALID_REQUEST);
        let nulls: Vec<i64> = out
            .iter()
            .filter(|v| v["id"].is_null())
            .map(|v| v["error"]["code"].as_i64().unwrap())
            .collect();
        // "{not json", the batch, and the binary line; the notification and the blank
        // line get nothing.
        assert_eq!(nulls.len(), 3, "{out:?}");
        assert!(nulls.contains(&PARSE_ERROR) && nulls.contains(&INVALID_REQUEST));
        assert_eq!(out.len(), 11, "{out:?}");
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused_and_the_next_one_served() {
        let mut input = "x".repeat(MAX_LINE + 10);
        input.push('\n');
        input.push_str(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        input.push('\n');
        let out = roundtrip(&input).await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["error"]["code"], INVALID_REQUEST);
        assert_eq!(out[1]["result"], json!({}));
    }
}
