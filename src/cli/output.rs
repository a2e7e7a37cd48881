//! How the CLI prints: `-o text|wide|json|yaml` for every command, tables sized by their cells, JSON lines for streams, RFC 3339 times.

use std::time::SystemTime;

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// `-o` / `--output` (etcdctl's `-w` / `--write-out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// For people: a line or a table.
    #[default]
    Text,
    /// Text with more columns (`status`: what each node itself reports).
    Wide,
    /// JSON: one document, or one object per line for streams (`watch`, `tso --loop`).
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Whether the output is for programs.
    pub fn is_machine(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }

    /// Prints `value` as JSON or YAML; false for the text formats, which
    /// the caller prints itself.
    pub fn print_data<T: Serialize>(self, value: &T) -> anyhow::Result<bool> {
        match self {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Yaml => print!("{}", serde_norway::to_string(value)?),
            Format::Text | Format::Wide => return Ok(false),
        }
        Ok(true)
    }

    /// Prints one event of a stream: a JSON object on one line (YAML: one
    /// document each), or the `text` line with its time in front.
    pub fn print_event<T: Serialize>(
        self,
        at: SystemTime,
        value: &T,
        text: &str,
    ) -> anyhow::Result<()> {
        match self {
            Format::Json => println!("{}", serde_json::to_string(value)?),
            Format::Yaml => print!("---\n{}", serde_norway::to_string(value)?),
            Format::Text | Format::Wide => println!("{} {text}", rfc3339(at)),
        }
        Ok(())
    }
}

/// A table with a header, as wide as its longest cells, no borders: what
/// kubectl prints, and what `awk` can read.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    table
}

/// Prints `table` with its trailing spaces trimmed.
pub fn print_table(table: &Table) {
    for line in table.lines() {
        let line = line.trim_end();
        println!("{}", line.strip_prefix(" ").unwrap_or(line));
    }
}

/// `time` in RFC 3339 with milliseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
