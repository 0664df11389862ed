//! DNS probe through hickory's resolver (system configuration or a given server).

use std::net::SocketAddr;
use std::str::FromStr;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RecordType;
use steward_spec::Observed;

pub(crate) async fn lookup(
    name: &str,
    record_type: &str,
    server: Option<SocketAddr>,
    obs: &mut Observed,
) -> Result<(), String> {
    let rtype = RecordType::from_str(record_type)
        .map_err(|_| format!("unsupported record type {record_type}"))?;
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    // A health check wants the server's answer now, not a cached one.
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 1;
    let resolver = builder
        .build()
        .map_err(|e| format!("cannot build resolver: {e}"))?;
    match resolver.lookup(name, rtype).await {
        Ok(lookup) => {
            obs.connected = true;
            obs.dns_rcode = Some("NOERROR".into());
            let answers: Vec<String> = lookup
                .answers()
                .iter()
                .map(|r| r.data.to_string())
                .collect();
            obs.ip = lookup
                .answers()
                .iter()
                .find(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                .map(|r| r.data.to_string());
            obs.body = Some(answers.join("\n"));
            Ok(())
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
            obs.connected = true;
            obs.dns_rcode = Some(rcode_name(nr.response_code.into()));
            obs.body = Some(String::new());
            Ok(())
        }
        Err(NetError::Dns(DnsError::ResponseCode(code))) => {
            obs.connected = true;
            obs.dns_rcode = Some(rcode_name(code.into()));
            Ok(())
        }
        Err(e) => Err(format!("lookup of {name} failed: {e}")),
    }
}

/// The mnemonic of an rcode as dig prints it (RFC 1035, RFC 2136, RFC 6895).
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADVERS".into(),
        other => format!("RCODE{other}"),
    }
}
