//! HTML of the web page: escaping of every string that came from a host or a person, and
//! the page frame. Strings are made inert twice over: HTML metacharacters become entities,
//! and control characters (newlines, ANSI escapes, bidi overrides) become visible escapes
//! (`\n`, `\x1b`, `\u{202e}`) so that a path or a reason cannot fake a line or a colour.
use std::fmt::Write;

/// `s` escaped for HTML text and attribute values, with control and bidi characters shown
/// as escapes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            // Bidi embeddings, overrides and isolates; zero-width and BOM.
            c @ ('\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200b}'..='\u{200f}'
            | '\u{feff}') => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Which live updates a page takes (the served script, never inline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    Off,
    /// Reload on any request change.
    List,
    /// Reload when this request leaves pending.
    Request(u64),
}

/// A whole page: `title` (escaped here), the signed-in approver (escaped here) and `body`
/// (already HTML).
pub fn page(title: &str, who: Option<&str>, csrf: Option<&str>, live: Live, body: &str) -> String {
    let mut nav = String::new();
    if let Some(w) = who {
        let _ = write!(
            nav,
            "<nav><a href=\"/\">Pending</a> <a href=\"/web/grants\">Grants</a> \
             <a href=\"/web/ledger\">Ledger</a> <span class=\"who\">{}</span>",
            esc(w)
        );
        if let Some(c) = csrf {
            let _ = write!(
                nav,
                " <form method=\"post\" action=\"/web/logout\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form>",
                esc(c)
            );
        }
        nav.push_str("</nav>");
    }
    let (script, attr) = match live {
        Live::Off => ("", String::new()),
        Live::List => (SCRIPT, " data-live=\"1\"".to_owned()),
        Live::Request(id) => (SCRIPT, format!(" data-live=\"1\" data-request=\"{id}\"")),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · confgate</title>\
         <link rel=\"stylesheet\" href=\"/web/static/style.css\">{script}</head>\
         <body{}><header><h1>confgate approvals</h1>{nav}</header><main>{body}</main></body></html>\n",
        esc(title),
        attr,
    )
}

const SCRIPT: &str = "<script src=\"/web/static/app.js\" defer></script>";

/// `ms` since the epoch as `2026-12-07 04:10:00 UTC`.
pub fn when(ms: i64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The served stylesheet.
pub const STYLE_CSS: &str = include_str!("static/style.css");
/// The served script: live updates over server-sent events.
pub const APP_JS: &str = include_str!("static/app.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_render_inert() {
        let s = "<script>alert(1)</script>\"'&\n\x1b[31mred\r\t\u{202e}gpj.exe\u{7f}";
        let e = esc(s);
        assert_eq!(
            e,
            "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;\\n\\x1b[31mred\\r\\t\\u{202e}gpj.exe\\x7f"
        );
        assert!(!e.chars().any(|c| c.is_control() || c == '<' || c == '"'));
        // C1 controls too.
        assert_eq!(esc("\u{9b}31m"), "\\x9b31m");
        let p = page("<t>", Some("oidc:<b>"), Some("c\"x"), Live::Request(3), "");
        assert!(p.contains("&lt;t&gt;") && p.contains("oidc:&lt;b&gt;") && p.contains("c&quot;x"));
        assert!(!p.contains("<script>"), "no inline script: {p}");
    }

    #[test]
    fn times() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
    }
}
