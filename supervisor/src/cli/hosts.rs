//! `supervisor hosts [--json]`: the hosts of the daemon's job board, as the board's database
//! sees them (alive or lost by its clock). A daemon without a board answers with its own
//! error, exit 11.

use super::client::{Client, Outcome};
use super::escape::shown;
use shared::exit;
use shared::protocol::client::{ClientReply, ClientRequest, HostSummary};
use std::io::Write;
use std::path::PathBuf;

pub async fn show(dir: Option<PathBuf>, json: bool) -> Outcome<i32> {
    let hosts = list(dir).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&hosts).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", table(&hosts));
    }
    let _ = out.flush();
    Ok(exit::SUCCESS)
}

/// Every host of the daemon's board, as the daemon read it.
pub async fn list(dir: Option<PathBuf>) -> Outcome<Vec<HostSummary>> {
    let reply = Client::call(dir, &ClientRequest::Hosts).await?;
    let ClientReply::Hosts(hosts) = reply else {
        return Err(super::jobs::unexpected(&reply));
    };
    Ok(hosts)
}

/// The human table: a header, then one line per host.
fn table(hosts: &[HostSummary]) -> String {
    let mut text = format!(
        "{:<20}  {:<32}  {:<5}  {:>9}  {:>4}  {:>8}  {}\n",
        "HOST", "INSTANCE", "STATE", "RENEWED", "JOBS", "MAX_JOBS", "VERSION"
    );
    for host in hosts {
        text.push_str(&format!(
            "{:<20}  {:<32}  {:<5}  {:>9}  {:>4}  {:>8}  {}\n",
            shown(&host.name),
            shown(&host.instance),
            host.state,
            format!("{}ms ago", host.renewal_age_ms.max(0)),
            host.live_jobs,
            host.max_jobs,
            shown(&host.version),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::client::HostState;

    #[test]
    fn the_table_has_a_header_and_a_line_per_host() {
        let host = HostSummary {
            name: "a".into(),
            instance: "0123456789abcdef0123456789abcdef".into(),
            state: HostState::Lost,
            renewal_age_ms: 1234,
            lease_ms: 1000,
            live_jobs: 3,
            max_jobs: 16,
            version: "0.1.0".into(),
        };
        let text = table(&[host]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("HOST"), "{text}");
        assert!(lines[1].starts_with("a "), "{text}");
        assert!(lines[1].contains(" lost "), "{text}");
        assert!(lines[1].contains("1234ms ago"), "{text}");
        assert!(lines[1].ends_with("0.1.0"), "{text}");
    }
}
