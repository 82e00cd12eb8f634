//! `kua-deploy health`: the check a container's HEALTHCHECK runs (the image has no curl). It asks
//! the server beside it for `/healthz` and exits 0 on a 200, else 1 with a one-line reason, within
//! 5 s. Every failure is 1, a bad option too: Docker reserves exit status 2 of a healthcheck.
//!
//! The address is `--url`/`KUA_HEALTH_URL`, else the one `serve` listens on (`KUA_LISTEN`, the
//! same default), with a loopback address for an unspecified host (`0.0.0.0`, `[::]`), over
//! `https://` when `KUA_TLS_CERT` is set. Over HTTPS with that certificate known, `health` trusts
//! exactly it (pinned): the server is reached at a loopback address its certificate does not
//! name, and the container's CA store may not hold the CA that signed it; a server that presents
//! another certificate, or cannot prove it holds the key, fails the check. Without
//! `KUA_TLS_CERT`, an `https://` URL is verified as by every client (system roots, `--ca-file`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::client::{check_base_url, Client};
use super::exit;
use super::tls::Trust;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The server's base URL [default: from --listen, as `serve` uses it].
    #[arg(long, env = "KUA_HEALTH_URL")]
    pub url: Option<String>,
    /// The address `serve` listens on.
    #[arg(long, env = "KUA_LISTEN", default_value = crate::app::DEFAULT_LISTEN)]
    pub listen: String,
    /// The certificate `serve` serves (its --tls-cert): https is used, and exactly this
    /// certificate is trusted.
    #[arg(long, env = "KUA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the CA(s) to trust besides the system's, for an https URL without --tls-cert.
    #[arg(long, env = "KUA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The URL of a server listening on `listen`, seen from the same machine.
pub fn local_url(listen: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    match listen.parse::<SocketAddr>() {
        Ok(addr) => {
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                // `[::]` may be IPv6 only (bindv6only): its own loopback always answers.
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
        }
        // A host name (`localhost:8790`), as `serve` resolves it too.
        Err(_) => format!("{scheme}://{listen}"),
    }
}

pub async fn run(args: HealthArgs) -> i32 {
    match check(&args).await {
        Ok(line) => {
            println!("{line}");
            exit::OK
        }
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            exit::FAILED
        }
    }
}

async fn check(args: &HealthArgs) -> Result<String, String> {
    let url = args.url.clone().unwrap_or_else(|| local_url(&args.listen, args.tls_cert.is_some()));
    let url = check_base_url(&url)?;
    let trust = match &args.tls_cert {
        Some(cert) if url.starts_with("https://") => Trust::pinned_from(cert)?,
        _ => Trust::Roots { ca_file: args.ca_file.clone() },
    };
    let client = Client::with_trust(&url, "", &trust)?.with_timeout(TIMEOUT);
    let health = client.health().await.map_err(|e| e.to_string())?;
    Ok(format!("{}: kua-deploy {} at {url}", health.status, health.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_host_is_reached_on_loopback() {
        assert_eq!(local_url("0.0.0.0:8790", false), "http://127.0.0.1:8790");
        assert_eq!(local_url("[::]:8790", true), "https://[::1]:8790");
    }

    #[test]
    fn a_specific_listen_address_or_host_name_is_used_as_it_is() {
        assert_eq!(local_url("127.0.0.1:8790", true), "https://127.0.0.1:8790");
        assert_eq!(local_url("10.1.2.3:80", false), "http://10.1.2.3:80");
        assert_eq!(local_url("localhost:8790", false), "http://localhost:8790");
    }

    #[test]
    fn the_default_is_where_serve_listens_by_default() {
        assert_eq!(local_url(crate::app::DEFAULT_LISTEN, false), "http://127.0.0.1:8790");
    }
}
