//! Response bytes from instances are untrusted too. The first byte picks the
//! request being answered (GET or HEAD, HTTP/1.1 or 1.0, asking for an upgrade
//! or not); the rest is the instance's response. Whatever steward accepts, the
//! head it sends the client, parsed again, frames the response the way steward
//! decided — including an HTTP/1.0 client getting a chunked body plain — and
//! carries the same body and the same end-to-end fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_http1::{Chunked, Head, ResponseFraming, parse_request, parse_response};

fn kept(h: &Head) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.end_to_end()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// The plain body framed by `f` at the start of `rest` (`to` says how it is
/// re-written), or `None` when incomplete or refused.
fn body(f: ResponseFraming, to: ResponseFraming, rest: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    match f {
        ResponseFraming::Length(n) => {
            let n = usize::try_from(n).ok().filter(|n| *n <= rest.len())?;
            Some((rest[..n].to_vec(), rest[..n].to_vec()))
        }
        ResponseFraming::Chunked => {
            let (mut wire, mut plain) = (Vec::new(), Vec::new());
            let mut d = Chunked::new(to == ResponseFraming::Chunked);
            d.decode(rest, &mut wire).ok()?;
            let mut p = Chunked::new(false);
            p.decode(rest, &mut plain).ok()?;
            (d.done() && p.done()).then_some((wire, plain))
        }
        ResponseFraming::Close => Some((rest.to_vec(), rest.to_vec())),
        _ => Some((Vec::new(), Vec::new())),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let request = format!(
        "{} / HTTP/1.{}\r\nHost: a\r\n{}\r\n",
        if pick & 1 == 0 { "GET" } else { "HEAD" },
        if pick & 2 == 0 { 1 } else { 0 },
        if pick & 4 == 0 { "" } else { "Connection: upgrade\r\nUpgrade: websocket\r\n" },
    );
    let (_, req) = parse_request(request.as_bytes()).unwrap().unwrap();
    let Ok(Some((n, resp))) = parse_response(data) else {
        return;
    };
    let Ok(framing) = resp.response_framing(&req) else {
        return;
    };
    let to = match framing {
        ResponseFraming::Chunked if req.minor() == 0 => ResponseFraming::Close,
        f => f,
    };
    // As the proxy writes them: interim heads alone, a switch without close.
    let close = match framing {
        ResponseFraming::Interim | ResponseFraming::Switch => false,
        _ => req.closes() || to == ResponseFraming::Close,
    };
    let mut out = Vec::new();
    if framing == ResponseFraming::Interim {
        resp.write_interim(&mut out);
    } else {
        resp.write_response(&mut out, framing, to, close, req.minor());
    }
    let head_len = out.len();
    let body = body(framing, to, &data[n..]);
    if let Some((wire, _)) = &body {
        out.extend_from_slice(wire);
    }

    // The proxy adds at most two fields; a head near the limit is checked by
    // count, its meaning only when it is within the limit.
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let count = match httparse::Response::new(&mut fields).parse(&out) {
        Ok(httparse::Status::Complete(_)) => fields.iter().filter(|f| !f.name.is_empty()).count(),
        other => panic!("the client cannot parse what steward sends: {other:?}"),
    };
    assert!(count <= 126, "{count} fields sent");
    if count > 124 {
        return;
    }
    let (m, again) = parse_response(&out)
        .expect("what steward sends, steward accepts")
        .expect("a complete head");
    assert_eq!(m, head_len);
    assert_eq!(again.status(), resp.status());
    assert_eq!(again.reason(), resp.reason());
    assert_eq!(kept(&again), kept(&resp));
    assert_eq!(again.response_framing(&req), Ok(to), "the client would frame it otherwise");
    if close {
        assert!(again.closes(), "a response that ends the connection must say so");
    }
    if let Some((_, plain)) = body {
        let (_, plain2) = self::body(to, to, &out[m..]).expect("the forwarded body is whole");
        assert_eq!(plain2, plain, "the body changed on the way");
    }
});
