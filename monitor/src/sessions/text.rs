//! Checks of what a caller names a session (agent name, reason), and escaping of what a
//! process gives (command line, working directory) so that it is safe to print.
use super::{MAX_AGENT_CHARS, MAX_COMMAND_BYTES, MAX_REASON_BYTES, SessionError};

/// Checks an agent name: 1 to [`MAX_AGENT_CHARS`] printable ASCII characters (letters, digits,
/// punctuation, inner spaces), no leading or trailing space. Agent names appear in tables,
/// logs and rules, so nothing invisible or terminal-controlling is allowed.
pub fn validate_agent(agent: &str) -> Result<(), SessionError> {
    if agent.is_empty() {
        return Err(SessionError::Invalid("agent name is empty".into()));
    }
    if agent.chars().count() > MAX_AGENT_CHARS {
        return Err(SessionError::Invalid(format!(
            "agent name is longer than {MAX_AGENT_CHARS} characters"
        )));
    }
    if let Some(c) = agent.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(SessionError::Invalid(format!(
            "agent name {:?} contains {:?}; use printable ASCII only",
            escape_text(agent),
            c
        )));
    }
    if agent.starts_with(' ') || agent.ends_with(' ') {
        return Err(SessionError::Invalid(
            "agent name starts or ends with a space".into(),
        ));
    }
    Ok(())
}

/// Checks a reason: at most [`MAX_REASON_BYTES`] bytes, no control characters (newlines and
/// tabs included) and no invisible formatting characters (bidirectional overrides,
/// zero-width characters) that could disguise it on a terminal.
pub fn validate_reason(reason: &str) -> Result<(), SessionError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(SessionError::Invalid(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    if let Some(c) = reason
        .chars()
        .find(|c| c.is_control() || is_invisible_format(*c))
    {
        return Err(SessionError::Invalid(format!(
            "reason contains the control or formatting character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Unicode format characters that change how surrounding text is displayed (Cf category
/// members that matter for spoofing).
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Escapes `\` as `\\` and control / invisible formatting characters as `\u{..}`, so the result
/// is safe to print and the escaping is unambiguous.
pub fn escape_text(s: &str) -> String {
    if !s
        .chars()
        .any(|c| c == '\\' || c.is_control() || is_invisible_format(c))
    {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || is_invisible_format(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The command line as stored: every argument escaped, at most [`MAX_COMMAND_BYTES`] in all.
pub(super) fn sanitize_command(command: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len().min(64));
    let mut budget = MAX_COMMAND_BYTES;
    for (i, arg) in command.iter().enumerate() {
        let arg = escape_text(arg);
        if arg.len() > budget {
            out.push(truncate_bytes(arg, budget));
            out.push(format!(
                "[confgate: command truncated, {} more arguments]",
                command.len() - i - 1
            ));
            break;
        }
        budget -= arg.len();
        out.push(arg);
    }
    out
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut with `…`.
pub(super) fn truncate_bytes(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
    s
}
