//! Request bytes from clients are untrusted, and the proxy forwards what it
//! makes of them. The oracle is more than "no panic": whatever steward
//! accepts, it forwards so that the forwarded bytes, parsed again, are the
//! same request — method, target, end-to-end fields, the framing it decided,
//! the same body — and end exactly where that request ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_http1::{BodyFraming, Chunked, Head, Via, parse_request};

/// End-to-end fields, less those the proxy replaces.
fn kept(h: &Head) -> Vec<(Vec<u8>, Vec<u8>)> {
    h.end_to_end()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case(b"expect")
                && !n.to_ascii_lowercase().starts_with(b"x-forwarded-")
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// The body of a request framed by `f` at the start of `rest`: the bytes as
/// forwarded, the plain body, and how much of `rest` it took; `None` when
/// incomplete or refused.
fn body(f: BodyFraming, rest: &[u8]) -> Option<(Vec<u8>, Vec<u8>, usize)> {
    match f {
        BodyFraming::None => Some((Vec::new(), Vec::new(), 0)),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).ok().filter(|n| *n <= rest.len())?;
            Some((rest[..n].to_vec(), rest[..n].to_vec(), n))
        }
        BodyFraming::Chunked => {
            let (mut wire, mut plain) = (Vec::new(), Vec::new());
            let mut rechunk = Chunked::new(true);
            let used = rechunk.decode(rest, &mut wire).ok()?;
            if !rechunk.done() {
                return None;
            }
            let mut dechunk = Chunked::new(false);
            let used_plain = dechunk.decode(rest, &mut plain).expect("same bytes, same verdict");
            assert!(dechunk.done() && used_plain == used);
            assert_eq!(rechunk.decoded(), plain.len() as u64);
            Some((wire, plain, used))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(Some((n, head))) = parse_request(data) else {
        return;
    };
    let framing = head.request_framing();
    let mut out = Vec::new();
    let via = Via {
        client: "192.0.2.1",
        host: "127.0.0.1:8000",
    };
    head.write_request(&mut out, &via, framing);
    let head_len = out.len();

    // One framing field at most, as httparse (independently) reads it.
    let mut fields = [httparse::EMPTY_HEADER; 160];
    let mut req = httparse::Request::new(&mut fields);
    assert!(matches!(req.parse(&out), Ok(httparse::Status::Complete(m)) if m == head_len));
    let framing_fields = req
        .headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        })
        .count();
    assert!(framing_fields <= 1, "{framing_fields} framing fields forwarded");
    assert!(req.headers.len() <= 100, "more fields than an instance takes");
    // A head near the client limit may forward a few fields over it (what the
    // proxy adds): its count is checked above, its meaning only below.
    if req.headers.len() > 94 {
        return;
    }

    let body = body(framing, &data[n..]);
    if let Some((wire, _, _)) = &body {
        out.extend_from_slice(wire);
    }
    let (m, again) = parse_request(&out)
        .expect("what steward forwards, steward accepts")
        .expect("a complete head");
    assert_eq!(m, head_len);
    assert_eq!(again.method(), head.method());
    assert_eq!(again.target(), head.target());
    assert_eq!(again.request_framing(), framing);
    assert_eq!(again.upgrade(), head.upgrade());
    let mut kept_again = kept(&again);
    if head.get("host").is_none() {
        // HTTP/1.0 without Host: HTTP/1.1 needs one — the target's
        // authority or the proxy's address.
        assert!(again.get("host").is_some(), "forwarded without Host");
        kept_again.retain(|(n, _)| n != b"host");
    }
    assert_eq!(kept_again, kept(&head));
    if let Some((wire, plain, _)) = body {
        let (wire2, plain2, used) = self::body(framing, &out[m..]).expect("the forwarded body is whole");
        assert_eq!(plain2, plain, "the body changed on the way");
        assert_eq!(wire2, wire, "re-serialising is not idempotent");
        assert_eq!(m + used, out.len(), "bytes left after the forwarded request");
    }
});
