//! The results table, and its place in `BENCHMARKS.md`.
use std::path::Path;

use serde_json::Value;

use super::scenario::Row;

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// Markdown: a line naming the run (date, machine, sizes), then the table.
pub fn render(results: &Value, rows: &[Row]) -> String {
    let m = &results["machine"];
    let mut t = format!(
        "Run: {} on {} ({} cores, kernel {}), {} rounds, {} ops per run{}.\n\n",
        results["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        results["rounds"],
        results["ops_per_run"],
        if results["quick"].as_bool() == Some(true) {
            " (quick)"
        } else {
            ""
        },
    );
    t += "| scenario | measure | daemon off | on (kernel path filter) | on (fanotify only) | ratio on/off | target | verdict |\n";
    t += "|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario, r.measure, r.off, r.on, r.on_no_filter, r.ratio, r.target, r.verdict
        );
    }
    t
}

/// Replace the table between the markers of `path` (or append it with the markers).
pub fn write_into(path: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, splice(&text, table))?;
    Ok(())
}

fn splice(text: &str, table: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{BEGIN}\n{table}{}", &text[..b], &text[e..]),
        _ => format!("{text}\n{BEGIN}\n{table}{END}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_markers() {
        let doc = format!("intro\n{BEGIN}\nold table\n{END}\nanalysis\n");
        let out = splice(&doc, "new\n");
        assert_eq!(out, format!("intro\n{BEGIN}\nnew\n{END}\nanalysis\n"));
        let out = splice("no markers\n", "t\n");
        assert!(out.starts_with("no markers\n") && out.contains(&format!("{BEGIN}\nt\n{END}")));
    }
}
