//! Where an upstream's client may connect besides the upstream itself: the hosts its redirects
//! (blob GETs only) and its token realm name. Never loopback, link-local (169.254.169.254 is the
//! cloud metadata service), unspecified, multicast, this host's own addresses, or private
//! ranges — unless the upstream itself lives in that class, or its `redirect_hosts` name the
//! host — and never archway's own listeners.
//!
//! Enforced twice: on the URL before a hop (IP literals, and the port of archway's listeners),
//! and in the connector's DNS resolver (names, at connect time, so a name cannot be re-pointed
//! between the check and the connection).

use hyper_util::client::legacy::connect::dns::Name;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// What kind of network an address is on, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddrClass {
    Public,
    Private,
    Loopback,
    LinkLocal,
    /// Unspecified, multicast, broadcast, documentation-only: never a destination.
    Never,
}

pub fn classify(ip: IpAddr) -> AddrClass {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || a == 0 {
                AddrClass::Never
            } else if v4.is_loopback() {
                AddrClass::Loopback
            } else if v4.is_link_local() {
                AddrClass::LinkLocal
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                // RFC 1918 and the shared (CGNAT) range.
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() || v6.is_multicast() {
                AddrClass::Never
            } else if v6.is_loopback() {
                AddrClass::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                AddrClass::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
    }
}

/// One upstream's egress policy.
#[derive(Debug)]
pub struct Egress {
    /// The upstream's own host: it may resolve anywhere (it is configured).
    upstream_host: String,
    /// The classes the upstream's own host is in: destinations there are allowed too.
    upstream_classes: OnceLock<Vec<AddrClass>>,
    /// `redirect_hosts`: `host`, `host:port` or `*.domain`, allowed whatever they resolve to.
    allowed: Vec<String>,
    /// archway's own listeners, never a destination.
    own: OnceLock<Vec<SocketAddr>>,
    /// This host's own addresses (with `own`'s ports, archway itself).
    local: OnceLock<Vec<IpAddr>>,
    /// What would let a refused destination through (the end of the refusal's message).
    remedy: String,
}

impl Egress {
    pub fn new(upstream: &str, upstream_host: &str, allowed: Vec<String>) -> Egress {
        let upstream_host = upstream_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let classes = OnceLock::new();
        if let Ok(ip) = upstream_host.parse::<IpAddr>() {
            let _ = classes.set(vec![classify(ip)]);
        } else if upstream_host == "localhost" {
            let _ = classes.set(vec![AddrClass::Loopback]);
        }
        Egress {
            upstream_host,
            upstream_classes: classes,
            allowed: allowed
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            own: OnceLock::new(),
            local: OnceLock::new(),
            remedy: format!("upstream {upstream}'s redirect_hosts would have to allow it"),
        }
    }

    /// The policy for `[fleet]` peers, the owners named in leases: public and private
    /// addresses (replicas live in a cluster's network), and the class this replica's own
    /// `peer_url` is in (loopback for replicas on one host); never link-local (the metadata
    /// service), never archway's own listeners.
    pub fn for_peers(me: &http::Uri) -> Egress {
        let (host, _) = host_and_port(me);
        let mut classes = vec![AddrClass::Public, AddrClass::Private];
        let mine = if host.eq_ignore_ascii_case("localhost") {
            Some(AddrClass::Loopback)
        } else {
            host.parse::<IpAddr>().ok().map(classify)
        };
        if let Some(class @ (AddrClass::Loopback | AddrClass::Private | AddrClass::Public)) = mine {
            classes.push(class);
        }
        let upstream_classes = OnceLock::new();
        let _ = upstream_classes.set(classes);
        Egress {
            // No host is exempt: every owner is checked.
            upstream_host: String::new(),
            upstream_classes,
            allowed: Vec::new(),
            own: OnceLock::new(),
            local: OnceLock::new(),
            remedy: "a lease owner may not be there".into(),
        }
    }

    /// archway's listeners (registry and admin); set once, at start.
    pub fn set_own_listeners(&self, listeners: Vec<SocketAddr>, local: Vec<IpAddr>) {
        let _ = self.own.set(listeners);
        let _ = self.local.set(local);
    }

    fn is_upstream_host(&self, host: &str) -> bool {
        !self.upstream_host.is_empty() && host.eq_ignore_ascii_case(&self.upstream_host)
    }

    fn is_allowed_host(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|pattern| {
            let (p_host, p_port) = match pattern.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
                _ => (pattern.as_str(), None),
            };
            let host_ok = match p_host.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == p_host,
            };
            host_ok && (p_port.is_none() || p_port == port)
        })
    }

    /// Remembers which classes the upstream's own host resolved to (once).
    fn learn_upstream(&self, addrs: &[SocketAddr]) {
        if self.upstream_classes.get().is_none() {
            let mut classes: Vec<AddrClass> = addrs.iter().map(|a| classify(a.ip())).collect();
            classes.sort();
            classes.dedup();
            let _ = self.upstream_classes.set(classes);
        }
    }

    /// Why `ip` may not be connected to for `host`, or `None` if it may.
    fn refuses_ip(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Option<String> {
        let own_ports = self.own.get().map(Vec::as_slice).unwrap_or_default();
        let is_local = |ip: IpAddr| {
            ip.is_loopback()
                || ip.is_unspecified()
                || self.local.get().is_some_and(|l| l.contains(&ip))
        };
        if let Some(port) = port {
            let hits_own = own_ports.iter().any(|own| {
                own.port() == port
                    && (own.ip() == ip || (own.ip().is_unspecified() && is_local(ip)))
            });
            if hits_own || (is_local(ip) && own_ports.iter().any(|o| o.port() == port)) {
                return Some(format!("{host} is archway's own listener"));
            }
        }
        if self.is_upstream_host(host) || self.is_allowed_host(host, port) {
            return None;
        }
        let class = classify(ip);
        let upstream_in = |c: AddrClass| {
            self.upstream_classes
                .get()
                .is_some_and(|classes| classes.contains(&c))
        };
        if self.local.get().is_some_and(|l| l.contains(&ip)) && !upstream_in(class) {
            return Some(format!(
                "{host} resolves to this host's own address ({ip}); {}",
                self.remedy
            ));
        }
        let why = match class {
            AddrClass::Public => return None,
            AddrClass::Never => "an address nothing may be fetched from",
            AddrClass::Loopback if !upstream_in(AddrClass::Loopback) => "a loopback address",
            AddrClass::LinkLocal if !upstream_in(AddrClass::LinkLocal) => {
                "a link-local address (such as the cloud metadata service)"
            }
            AddrClass::Private if !upstream_in(AddrClass::Private) => "a private address",
            _ => return None,
        };
        Some(format!("{host} resolves to {why} ({ip}); {}", self.remedy))
    }

    /// Checks a URL before a hop (an IP literal is not resolved, so it is checked here).
    pub fn check_url(&self, uri: &http::Uri) -> Result<(), String> {
        let (host, port) = host_and_port(uri);
        match host.parse::<IpAddr>() {
            Ok(ip) => match self.refuses_ip(host, ip, port) {
                Some(why) => Err(why),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }

    /// `check_url` for a configured URL (an upstream's or a parent's own), at start: `localhost`
    /// counts as the loopback addresses, where archway's own listener may well be.
    pub fn check_own_url(&self, uri: &http::Uri) -> Result<(), String> {
        let (host, port) = host_and_port(uri);
        if host.eq_ignore_ascii_case("localhost") {
            let loopback = [
                IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ];
            return match loopback
                .into_iter()
                .find_map(|ip| self.refuses_ip(host, ip, port))
            {
                Some(why) => Err(why),
                None => Ok(()),
            };
        }
        self.check_url(uri)
    }

    /// Checks a name's addresses, resolved for a connection; keeps the ones allowed.
    fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        if self.is_upstream_host(host) {
            self.learn_upstream(&addrs);
            return Ok(addrs);
        }
        let mut refused = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.refuses_ip(host, a.ip(), None) {
                Some(why) => {
                    refused = Some(why);
                    false
                }
                None => true,
            })
            .collect();
        match (kept.is_empty(), refused) {
            (true, Some(why)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, why)),
            _ => Ok(kept),
        }
    }
}

/// A URL's host (without IPv6 brackets) and its port, the scheme's default if none is given.
fn host_and_port(uri: &http::Uri) -> (&str, Option<u16>) {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        _ => Some(80),
    });
    (host, port)
}

/// The connector's resolver: the system's, with the egress policy applied to every name.
#[derive(Clone)]
pub struct GuardedResolver {
    egress: Arc<Egress>,
}

impl GuardedResolver {
    pub fn new(egress: Arc<Egress>) -> Self {
        GuardedResolver { egress }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(egress.filter(&host, addrs)?.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classes() {
        for (addr, class) in [
            ("8.8.8.8", AddrClass::Public),
            ("104.16.1.1", AddrClass::Public),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.8.9.10", AddrClass::Loopback),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Never),
            ("0.1.2.3", AddrClass::Never),
            ("224.0.0.1", AddrClass::Never),
            ("255.255.255.255", AddrClass::Never),
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Never),
            ("fe80::1", AddrClass::LinkLocal),
            ("fd00::1", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("2606:4700::1", AddrClass::Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn a_public_upstream_never_reaches_inside() {
        let e = Egress::new("docker.io", "registry-1.docker.io", vec![]);
        e.set_own_listeners(vec!["0.0.0.0:5000".parse().unwrap()], vec![ip("10.0.0.5")]);
        let url = |u: &str| e.check_url(&u.parse().unwrap());
        assert!(url("https://104.16.1.1/blob").is_ok(), "a CDN");
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9090/metrics",
            "http://10.0.0.9/",
            "http://[::1]/",
            "http://0.0.0.0:5000/",
            "http://10.0.0.5:5000/v2/",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        // Names are checked when resolved.
        let r = e.filter("evil.example", vec!["169.254.169.254:0".parse().unwrap()]);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let kept = e
            .filter(
                "mixed.example",
                vec![
                    "10.0.0.1:0".parse().unwrap(),
                    "104.16.1.1:0".parse().unwrap(),
                ],
            )
            .unwrap();
        assert_eq!(kept, vec!["104.16.1.1:0".parse::<SocketAddr>().unwrap()]);
        // The upstream's own name may resolve anywhere.
        assert!(e
            .filter("registry-1.docker.io", vec!["10.9.9.9:0".parse().unwrap()])
            .is_ok());
    }

    /// Issue 18: a lease's owner passes the same policy: no metadata service, none of
    /// archway's own listeners, loopback only for replicas that are on loopback themselves.
    #[test]
    fn lease_owners_are_peers_in_the_cluster_never_metadata_nor_archway_itself() {
        let e = Egress::for_peers(&"http://10.1.2.3:5000".parse().unwrap());
        e.set_own_listeners(
            vec![
                "0.0.0.0:5000".parse().unwrap(),
                "127.0.0.1:9090".parse().unwrap(),
            ],
            vec![ip("10.1.2.3")],
        );
        let url = |u: &str| e.check_url(&u.parse().unwrap());
        assert!(url("http://10.1.2.4:5000").is_ok(), "another replica");
        assert!(url("http://104.16.1.1:5000").is_ok());
        for bad in [
            "http://169.254.169.254",
            "http://[fe80::1]:5000",
            "http://127.0.0.1:9090",
            "http://10.1.2.3:5000",
            "http://127.0.0.1:6000",
            "http://0.0.0.0:5000",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            e.filter("evil.example", vec!["169.254.169.254:0".parse().unwrap()])
                .unwrap_err()
                .kind(),
            io::ErrorKind::PermissionDenied
        );
        let local = Egress::for_peers(&"http://127.0.0.1:5000".parse().unwrap());
        local.set_own_listeners(vec!["127.0.0.1:5000".parse().unwrap()], vec![]);
        let url = |u: &str| local.check_url(&u.parse().unwrap());
        assert!(url("http://127.0.0.1:5001").is_ok(), "replicas on one host");
        assert!(url("http://127.0.0.1:5000").is_err());
        assert!(url("http://169.254.169.254").is_err());
    }

    #[test]
    fn an_upstream_inside_reaches_its_own_class_and_allowed_hosts() {
        let e = Egress::new(
            "lab",
            "127.0.0.1",
            vec!["cdn.internal".into(), "*.blobs.internal:8443".into()],
        );
        e.set_own_listeners(
            vec![
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:9090".parse().unwrap(),
            ],
            vec![],
        );
        let url = |u: &str| e.check_url(&u.parse().unwrap());
        assert!(
            url("http://127.0.0.1:6000/blob").is_ok(),
            "loopback like the upstream"
        );
        assert!(
            url("http://127.0.0.1:9090/metrics").is_err(),
            "archway's admin"
        );
        assert!(url("http://127.0.0.1:5000/v2/").is_err(), "archway itself");
        let own = |u: &str| e.check_own_url(&u.parse().unwrap());
        assert!(
            own("http://localhost:5000").is_err(),
            "archway itself by name"
        );
        assert!(own("http://localhost:6000").is_ok());
        assert!(own("http://127.0.0.1:9090").is_err());
        assert!(
            url("http://169.254.169.254/").is_err(),
            "still not link-local"
        );
        assert!(url("http://10.0.0.1/").is_err(), "nor private");
        assert!(e
            .filter("cdn.internal", vec!["10.0.0.1:0".parse().unwrap()])
            .is_ok());
        assert!(e.is_allowed_host("a.blobs.internal", Some(8443)));
        assert!(!e.is_allowed_host("a.blobs.internal", Some(443)));
        assert!(!e.is_allowed_host("blobs.internal.evil", Some(8443)));
    }
}
