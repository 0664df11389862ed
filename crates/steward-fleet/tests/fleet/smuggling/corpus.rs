//! Request byte streams for the differential framing test, written for
//! steward from RFC 9112 (§2.2 message parsing, §3 request line, §5 fields,
//! §6 body framing, §7 chunked coding, §9.3 persistence and pipelining) and
//! the classes of attack in the published request-smuggling research
//! (CL.TE, TE.CL and TE.TE desynchronisation with obfuscated
//! `Transfer-Encoding`; chunk-size overflow, extension and line-ending
//! tricks; HTTP/1.0 keep-alive; `Expect`; `Upgrade` without a completed
//! handshake). Each case is what one client connection sends, all at once.
//!
//! A case marked `strict` is one steward refuses on purpose even where the
//! reference servers accept it; the reason says which rule of RFC 9112 it
//! enforces.

/// One client connection's bytes.
pub(super) struct Case {
    pub(super) name: String,
    pub(super) bytes: Vec<u8>,
    /// Refused by steward on purpose, with the reason.
    pub(super) strict: Option<&'static str>,
}

fn case(name: impl Into<String>, bytes: impl AsRef<[u8]>) -> Case {
    Case {
        name: name.into(),
        bytes: bytes.as_ref().to_vec(),
        strict: None,
    }
}

impl Case {
    fn strict(mut self, why: &'static str) -> Self {
        self.strict = Some(why);
        self
    }

    /// Strict when there is a reason.
    fn strict_if(mut self, why: Option<&'static str>) -> Self {
        self.strict = why;
        self
    }
}

/// A request with `fields` (each ending in CRLF) and `body`.
fn req(line: &str, fields: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{line}\r\n{fields}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

const GET2: &str = "GET /second HTTP/1.1\r\nHost: a\r\n\r\n";
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

pub(super) fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    baselines(&mut c);
    length_and_chunked_together(&mut c);
    transfer_encoding_values(&mut c);
    content_length_values(&mut c);
    chunk_sizes_and_extensions(&mut c);
    chunk_ends_and_trailers(&mut c);
    request_lines(&mut c);
    fields(&mut c);
    hosts(&mut c);
    persistence(&mut c);
    expectations_and_upgrades(&mut c);
    c
}

/// Well-formed requests every parser must read the same way.
fn baselines(c: &mut Vec<Case>) {
    let h = "Host: a\r\n";
    c.push(case("get", req("GET / HTTP/1.1", h, b"")));
    c.push(case(
        "get-query",
        req("GET /p/q?x=1&y=%20 HTTP/1.1", h, b""),
    ));
    c.push(case("head", req("HEAD /h HTTP/1.1", h, b"")));
    c.push(case("delete", req("DELETE /d HTTP/1.1", h, b"")));
    c.push(case(
        "post-length-0",
        req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 0\r\n", b""),
    ));
    c.push(case(
        "post-length",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 5\r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "put-length-binary",
        req(
            "PUT /b HTTP/1.1",
            "Host: a\r\nContent-Length: 6\r\n",
            b"\x00\r\n\xff\n\r",
        ),
    ));
    c.push(case(
        "get-with-body",
        req("GET / HTTP/1.1", "Host: a\r\nContent-Length: 3\r\n", b"abc"),
    ));
    c.push(case(
        "post-chunked",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-many",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-empty",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-upper-hex",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-crlf-in-data",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"6\r\n\r\n0\r\n\r\n\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-extension",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5;name=value\r\nhello\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-extension-quoted",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5;n=\"a;b=c\"\r\nhello\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-extension-bare-name",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5;flag\r\nhello\r\n0;last\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-trailer",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-chunked-trailers-two",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
        ),
    ));
    c.push(case(
        "post-length-leading-zeros",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 005\r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "post-length-ows",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length:  5 \r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "te-ows",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding:   chunked  \r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "te-case",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: ChUnKeD\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "te-name-case",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\ntRANSFER-eNCODING: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "cl-name-case",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\ncontent-LENGTH: 3\r\n",
            b"abc",
        ),
    ));
    c.push(case("many-fields", {
        let mut f = String::from("Host: a\r\n");
        for i in 0..60 {
            f.push_str(&format!("X-Field-{i}: value {i}\r\n"));
        }
        req("GET / HTTP/1.1", &f, b"")
    }));
    c.push(case(
        "long-field",
        req(
            "GET / HTTP/1.1",
            &format!("Host: a\r\nX-Long: {}\r\n", "v".repeat(6000)),
            b"",
        ),
    ));
    c.push(case(
        "obs-text-value",
        req(
            "GET / HTTP/1.1",
            "Host: a\r\nX-Text: caf\u{e9} \u{263a}\r\n",
            b"",
        ),
    ));
    c.push(case(
        "empty-value",
        req("GET / HTTP/1.1", "Host: a\r\nX-Empty:\r\n", b""),
    ));
    c.push(case(
        "tab-in-value",
        req("GET / HTTP/1.1", "Host: a\r\nX-Tab: a\tb\r\n", b""),
    ));
    c.push(case(
        "absolute-form",
        req("GET http://a/abs?q HTTP/1.1", h, b""),
    ));
    c.push(case("utf8-target", req("GET /caf\u{e9} HTTP/1.1", h, b"")));
    c.push(case(
        "leading-empty-line",
        [&b"\r\n"[..], &req("GET / HTTP/1.1", h, b"")].concat(),
    ));
    c.push(case("http10-no-host", req("GET / HTTP/1.0", "", b"")));
    c.push(case(
        "http10-post",
        req("POST / HTTP/1.0", "Content-Length: 4\r\n", b"body"),
    ));
    c.push(case(
        "x-forwarded-for-kept",
        req(
            "GET / HTTP/1.1",
            "Host: a\r\nX-Forwarded-For: 192.0.2.1\r\n",
            b"",
        ),
    ));
    c.push(case(
        "connection-named-field",
        req(
            "GET / HTTP/1.1",
            "Host: a\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n",
            b"",
        ),
    ));
}

/// CL.TE and TE.CL: both length headers, the classic desynchronisation
/// (RFC 9112 §6.1: reject, or treat as chunked and close).
fn length_and_chunked_together(c: &mut Vec<Case>) {
    let why = "RFC 9112 §6.1: a message with both Content-Length and Transfer-Encoding is refused";
    let variants: &[(&str, &str, Vec<u8>)] = &[
        (
            "cl-te-prefix",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\nG".to_vec(),
        ),
        (
            "te-cl-prefix",
            "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
            b"0\r\n\r\nG".to_vec(),
        ),
        (
            "cl-te-request",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            [b"0\r\n\r\n".as_slice(), SMUGGLED.as_bytes()].concat(),
        ),
        (
            "te-cl-request",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            {
                let inner = "GPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 15\r\n\r\nx=1";
                format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len()).into_bytes()
            },
        ),
        (
            "cl-te-exact",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n".to_vec(),
        ),
        (
            "cl-zero-te",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "te-cl-zero",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            b"0\r\n\r\n".to_vec(),
        ),
        (
            "cl-te-big",
            "Content-Length: 100\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n".to_vec(),
        ),
        (
            "cl-te-then-get",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            [b"0\r\n\r\n".as_slice(), GET2.as_bytes()].concat(),
        ),
        (
            "te-cl-two-cl",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"0\r\n\r\n".to_vec(),
        ),
    ];
    for (name, f, body) in variants {
        c.push(
            case(
                *name,
                req("POST / HTTP/1.1", &format!("Host: a\r\n{f}"), body),
            )
            .strict(why),
        );
    }
}

/// TE.TE: `Transfer-Encoding` values and names one parser may read as
/// chunked and another not. Each goes once alone and once next to a
/// `Content-Length` that would frame the body differently.
fn transfer_encoding_values(c: &mut Vec<Case>) {
    let body = [b"0\r\n\r\n".as_slice(), SMUGGLED.as_bytes()].concat();
    let te_lines: &[(&str, &str, Option<&'static str>)] = &[
        (
            "double",
            "Transfer-Encoding: chunked, chunked\r\n",
            Some("RFC 9112 §6.1: chunked is applied once; only `chunked` alone is accepted"),
        ),
        (
            "trailing-comma",
            "Transfer-Encoding: chunked,\r\n",
            Some("only `chunked` alone is accepted"),
        ),
        (
            "leading-comma",
            "Transfer-Encoding: , chunked\r\n",
            Some("only `chunked` alone is accepted"),
        ),
        ("gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n", None),
        ("chunked-gzip", "Transfer-Encoding: chunked, gzip\r\n", None),
        (
            "identity-chunked",
            "Transfer-Encoding: identity, chunked\r\n",
            None,
        ),
        ("identity", "Transfer-Encoding: identity\r\n", None),
        ("xchunked", "Transfer-Encoding: xchunked\r\n", None),
        ("chunkedx", "Transfer-Encoding: chunkedx\r\n", None),
        ("chunk", "Transfer-Encoding: chunk\r\n", None),
        ("split", "Transfer-Encoding: chu nked\r\n", None),
        ("quoted", "Transfer-Encoding: \"chunked\"\r\n", None),
        ("param", "Transfer-Encoding: chunked;q=1\r\n", None),
        ("vtab", "Transfer-Encoding: chunked\x0b\r\n", None),
        ("formfeed", "Transfer-Encoding: \x0cchunked\r\n", None),
        ("nul", "Transfer-Encoding: chunked\x00\r\n", None),
        ("bare-cr", "Transfer-Encoding: chunked\rX: y\r\n", None),
        (
            "space-before-colon",
            "Transfer-Encoding : chunked\r\n",
            None,
        ),
        ("tab-before-colon", "Transfer-Encoding\t: chunked\r\n", None),
        ("underscore-name", "Transfer_Encoding: chunked\r\n", None),
        ("no-space", "Transfer-Encoding:chunked\r\n", None),
        ("folded-value", "Transfer-Encoding:\r\n chunked\r\n", None),
        (
            "folded-name",
            "X: y\r\n Transfer-Encoding: chunked\r\n",
            None,
        ),
        (
            "two-fields",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            Some("RFC 9112 §6.1: chunked is applied once; a repeated field is refused"),
        ),
        (
            "two-fields-identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            None,
        ),
        (
            "two-fields-identity-first",
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
            None,
        ),
        ("high-byte", "Transfer-Encoding: \u{e9}chunked\r\n", None),
        ("empty", "Transfer-Encoding:\r\n", None),
        ("unicode-k", "Transfer-Encoding: chun\u{212a}ed\r\n", None),
    ];
    let both = "RFC 9112 §6.1: a message with both Content-Length and Transfer-Encoding is refused";
    for (name, line, why) in te_lines {
        let alone = case(
            format!("te-{name}"),
            req("POST / HTTP/1.1", &format!("Host: a\r\n{line}"), &body),
        );
        c.push(alone.strict_if(*why));
        let with_cl = case(
            format!("te-{name}-with-cl"),
            req(
                "POST / HTTP/1.1",
                &format!("Host: a\r\nContent-Length: 5\r\n{line}"),
                &body,
            ),
        );
        // A field that is not Transfer-Encoding at all leaves Content-Length alone.
        c.push(if *name == "underscore-name" {
            with_cl
        } else {
            with_cl.strict(both)
        });
    }
    // Transfer-Encoding where RFC 9112 §6.1 says the framing is faulty.
    c.push(
        case(
            "te-http10",
            req("POST / HTTP/1.0", "Transfer-Encoding: chunked\r\n", &body),
        )
        .strict("RFC 9112 §6.1: Transfer-Encoding on HTTP/1.0 is faulty framing"),
    );
    c.push(
        case(
            "te-http10-keep-alive",
            req(
                "POST / HTTP/1.0",
                "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
                &body,
            ),
        )
        .strict("RFC 9112 §6.1: Transfer-Encoding on HTTP/1.0 is faulty framing"),
    );
    c.push(case(
        "te-on-get",
        req(
            "GET / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "te-get-then-get",
        req(
            "GET / HTTP/1.1",
            "Host: a\r\nTransfer-Encoding: chunked\r\n",
            [b"0\r\n\r\n".as_slice(), GET2.as_bytes()]
                .concat()
                .as_slice(),
        ),
    ));
}

/// `Content-Length` values: one run of digits only (RFC 9110 §8.6).
fn content_length_values(c: &mut Vec<Case>) {
    let body = [b"hello".as_slice(), SMUGGLED.as_bytes()].concat();
    let values: &[(&str, &str)] = &[
        ("plus", "+5"),
        ("minus", "-5"),
        ("hex", "0x5"),
        ("decimal-point", "5.0"),
        ("exponent", "5e0"),
        ("inner-space", "5 5"),
        ("list-same", "5, 5"),
        ("list-same-nospace", "5,5"),
        ("list-different", "5, 6"),
        ("empty", ""),
        ("letters", "five"),
        ("trailing-letter", "5a"),
        ("u64-overflow", "18446744073709551616"),
        ("i64-overflow", "9223372036854775808"),
        ("huge", "99999999999999999999999999"),
        ("vtab", "5\x0b"),
        ("nul", "5\x00"),
        ("underscore", "5_0"),
        ("fullwidth-digit", "\u{ff15}"),
        ("quoted", "\"5\""),
    ];
    for (name, v) in values {
        c.push(case(
            format!("cl-{name}"),
            req(
                "POST / HTTP/1.1",
                &format!("Host: a\r\nContent-Length: {v}\r\n"),
                &body,
            ),
        ));
    }
    c.push(case(
        "cl-two-same",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-two-different",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-two-different-reversed",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 6\r\nContent-Length: 5\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-space-before-colon",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length : 5\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-folded",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length:\r\n 5\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-folded-second",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nX: y\r\n Content-Length: 5\r\n",
            &body,
        ),
    ));
    c.push(case(
        "cl-max-safe",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 9223372036854775807\r\n",
            b"short",
        ),
    ));
    c.push(case(
        "cl-more-than-sent",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 50\r\n",
            b"short",
        ),
    ));
    c.push(case(
        "cl-zero-then-smuggled",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 0\r\n",
            SMUGGLED.as_bytes(),
        ),
    ));
    c.push(case(
        "cl-short-then-get",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nContent-Length: 2\r\n",
            format!("ab{GET2}").as_bytes(),
        ),
    ));
}

fn chunked(body: &[u8]) -> Vec<u8> {
    req(
        "POST / HTTP/1.1",
        "Host: a\r\nTransfer-Encoding: chunked\r\n",
        body,
    )
}

/// Chunk-size lines: digits, overflow, whitespace, extensions (RFC 9112 §7.1).
fn chunk_sizes_and_extensions(c: &mut Vec<Case>) {
    let ext = "RFC 9112 §7.1.1: chunk-ext is `;` token [`=` token / quoted-string]";
    let tail = format!("0\r\n\r\n{SMUGGLED}");
    let sizes: &[(&str, &str, Option<&'static str>)] = &[
        ("minus", "-5", None),
        ("plus", "+5", None),
        ("hex-prefix", "0x5", None),
        ("leading-space", " 5", None),
        ("trailing-space", "5 ", None),
        ("trailing-tab", "5\t", None),
        ("leading-zeros", "0005", None),
        ("seventeen-digits", "00000000000000005", None),
        ("u64-overflow", "10000000000000005", None),
        ("u64-max", "ffffffffffffffff", None),
        ("i64-overflow", "8000000000000000", None),
        ("two-to-the-59", "800000000000000", None),
        ("below-two-to-the-59", "7ffffffffffffff", None),
        ("underscore", "0_5", None),
        ("letter", "5g", None),
        ("not-hex", "g", None),
        ("empty", "", None),
        ("fullwidth", "\u{ff15}", None),
        ("vtab", "5\x0b", None),
        ("nul", "5\x00", None),
        ("ext-plain", "5;a=b", None),
        ("ext-bws", "5 ; a = b", None),
        ("ext-two", "5;a=b;c=d", None),
        ("ext-quoted-escape", "5;a=\"b\\\"c\"", None),
        ("ext-empty", "5;", Some(ext)),
        ("ext-no-name", "5;=b", Some(ext)),
        ("ext-no-value", "5;a=", Some(ext)),
        ("ext-space-in-value", "5;a=b c", Some(ext)),
        ("ext-unterminated-quote", "5;a=\"b", Some(ext)),
        ("ext-junk", "5;a\"b", Some(ext)),
        ("ext-nul", "5;a\x00", Some(ext)),
        (
            "ext-bare-cr",
            "5;a\rb",
            Some("RFC 9112 §2.2: a bare CR is invalid"),
        ),
        ("ext-high-byte", "5;\u{e9}", Some(ext)),
        (
            "ext-long",
            &*Box::leak(format!("5;a={}", "b".repeat(5000)).into_boxed_str()),
            Some("a chunk-size line over 4 KiB is refused"),
        ),
    ];
    for (name, size, why) in sizes {
        let mut body = format!("{size}\r\nhello\r\n").into_bytes();
        body.extend_from_slice(tail.as_bytes());
        let k = case(format!("chunk-{name}"), chunked(&body));
        c.push(k.strict_if(*why));
    }
    c.push(
        case(
            "chunk-size-bare-lf",
            chunked(format!("5\nhello\r\n{tail}").as_bytes()),
        )
        .strict("RFC 9112 §7.1: chunk lines end in CRLF"),
    );
    c.push(
        case(
            "chunk-ext-bare-lf",
            chunked(format!("5;a\nhello\r\n{tail}").as_bytes()),
        )
        .strict("RFC 9112 §7.1: chunk lines end in CRLF"),
    );
    c.push(case(
        "chunk-size-cr-cr-lf",
        chunked(format!("5\r\r\nhello\r\n{tail}").as_bytes()),
    ));
    c.push(
        case(
            "chunk-size-lf-lf",
            chunked(format!("5\n\nhello\r\n{tail}").as_bytes()),
        )
        .strict("RFC 9112 §7.1: chunk lines end in CRLF"),
    );
    c.push(case(
        "chunk-size-too-small",
        chunked(format!("3\r\nhello\r\n{tail}").as_bytes()),
    ));
    c.push(case(
        "chunk-size-too-large",
        chunked(format!("9\r\nhello\r\n{tail}").as_bytes()),
    ));
    c.push(case(
        "chunk-size-huge-unfinished",
        chunked(b"7fffffffffffffff\r\nhello"),
    ));
    c.push(case(
        "chunk-hides-request",
        chunked(format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()).as_bytes()),
    ));
    c.push(case("chunk-zero-with-ext", chunked(b"0;a=b\r\n\r\n")));
    c.push(case("chunk-zero-leading-zeros", chunked(b"0000\r\n\r\n")));
}

/// What follows chunk data and the last chunk (RFC 9112 §7.1, §7.1.2).
fn chunk_ends_and_trailers(c: &mut Vec<Case>) {
    let lf = "RFC 9112 §7.1: chunk data and trailer lines end in CRLF";
    let items: &[(&str, &[u8], Option<&'static str>)] = &[
        ("data-no-crlf", b"5\r\nhelloXX0\r\n\r\n", None),
        ("data-bare-lf", b"5\r\nhello\n0\r\n\r\n", Some(lf)),
        ("data-bare-cr", b"5\r\nhello\r0\r\n\r\n", None),
        (
            "data-crlf-missing-then-request",
            b"5\r\nhello0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            None,
        ),
        ("last-bare-lf", b"5\r\nhello\r\n0\n\r\n", Some(lf)),
        ("end-bare-lf", b"5\r\nhello\r\n0\r\n\n", Some(lf)),
        ("end-missing", b"5\r\nhello\r\n0\r\n", None),
        (
            "trailer-bare-lf",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            Some(lf),
        ),
        (
            "trailer-space-before-colon",
            b"5\r\nhello\r\n0\r\nX : 1\r\n\r\n",
            Some("RFC 9112 §5.1: no whitespace between a field name and its colon"),
        ),
        (
            "trailer-folded",
            b"5\r\nhello\r\n0\r\nX: 1\r\n 2\r\n\r\n",
            Some("RFC 9112 §5.2: obsolete line folding is refused"),
        ),
        (
            "trailer-no-colon",
            b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
            Some("a trailer line must be a field"),
        ),
        (
            "trailer-nul",
            b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n",
            Some("RFC 9110 §5.5: no control characters in field values"),
        ),
        (
            "trailer-content-length",
            b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
            None,
        ),
        (
            "trailer-transfer-encoding",
            b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
        ),
        (
            "trailer-host",
            b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n",
            None,
        ),
        (
            "trailer-hides-request",
            b"5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            Some("a trailer line must be a field"),
        ),
        ("two-last-chunks", b"0\r\n\r\n0\r\n\r\n", None),
        ("data-after-end", b"5\r\nhello\r\n0\r\n\r\nhello", None),
    ];
    for (name, body, why) in items {
        let k = case(format!("chunk-{name}"), chunked(body));
        c.push(k.strict_if(*why));
    }
}

/// Request lines (RFC 9112 §3).
fn request_lines(c: &mut Vec<Case>) {
    let h = "Host: a\r\n";
    let items: &[(&str, &[u8], Option<&'static str>)] = &[
        ("space-in-target", b"GET /a b HTTP/1.1", None),
        ("double-space", b"GET  / HTTP/1.1", None),
        ("trailing-space", b"GET / HTTP/1.1 ", None),
        ("tab-separator", b"GET\t/\tHTTP/1.1", None),
        ("version-1-2", b"GET / HTTP/1.2", None),
        ("version-2", b"GET / HTTP/2.0", None),
        ("version-lower", b"GET / http/1.1", None),
        ("version-missing", b"GET /", None),
        ("version-0-9", b"GET / HTTP/0.9", None),
        ("method-nul", b"G\x00T / HTTP/1.1", None),
        ("method-lower", b"get / HTTP/1.1", None),
        ("method-custom", b"PURGE /x HTTP/1.1", None),
        (
            "method-long",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA / HTTP/1.1",
            None,
        ),
        (
            "target-no-slash",
            b"GET a HTTP/1.1",
            Some(
                "RFC 9112 §3.2: a request target is in origin, absolute, authority (CONNECT) or asterisk form",
            ),
        ),
        (
            "target-asterisk-get",
            b"GET * HTTP/1.1",
            Some("RFC 9112 §3.2.4: the asterisk form is for OPTIONS only"),
        ),
        ("target-asterisk-options", b"OPTIONS * HTTP/1.1", None),
        ("target-nul", b"GET /a\x00b HTTP/1.1", None),
        ("target-del", b"GET /a\x7fb HTTP/1.1", None),
        ("target-bare-cr", b"GET /a\rb HTTP/1.1", None),
        ("target-fragment", b"GET /a#frag HTTP/1.1", None),
        ("target-double-slash", b"GET //a HTTP/1.1", None),
        ("target-absolute-https", b"GET https://a/x HTTP/1.1", None),
        (
            "target-absolute-other-scheme",
            b"GET ftp://a/x HTTP/1.1",
            Some("only http and https targets are routed"),
        ),
        (
            "connect",
            b"CONNECT a:443 HTTP/1.1",
            Some("CONNECT opens a tunnel; steward's proxy offers none"),
        ),
        (
            "connect-origin",
            b"CONNECT / HTTP/1.1",
            Some("CONNECT opens a tunnel; steward's proxy offers none"),
        ),
        ("line-bare-cr", b"GET / HTTP/1.1\rX", None),
        ("missing-method", b" / HTTP/1.1", None),
    ];
    for (name, line, why) in items {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let k = case(format!("line-{name}"), &bytes);
        c.push(k.strict_if(*why));
    }
    c.push(case("line-lf-only-head", b"GET / HTTP/1.1\nHost: a\n\n"));
    c.push(case(
        "line-mixed-endings",
        b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\n",
    ));
    c.push(case(
        "line-lf-then-get",
        [&b"GET / HTTP/1.1\nHost: a\n\n"[..], GET2.as_bytes()].concat(),
    ));
    c.push(case("line-only-crlfs", b"\r\n\r\n\r\n"));
}

/// Field syntax (RFC 9112 §5, RFC 9110 §5.5).
fn fields(c: &mut Vec<Case>) {
    let items: &[(&str, &[u8], Option<&'static str>)] = &[
        ("no-colon", b"X-No-Colon\r\n", None),
        ("empty-name", b": value\r\n", None),
        ("space-in-name", b"X Y: 1\r\n", None),
        ("space-before-colon", b"X-Y : 1\r\n", None),
        ("obs-fold", b"X-Y: 1\r\n 2\r\n", None),
        ("obs-fold-tab", b"X-Y: 1\r\n\t2\r\n", None),
        ("nul-in-value", b"X-Y: a\x00b\r\n", None),
        ("del-in-value", b"X-Y: a\x7fb\r\n", None),
        ("ctl-in-value", b"X-Y: a\x01b\r\n", None),
        ("bare-cr-in-value", b"X-Y: a\rb\r\n", None),
        ("esc-in-value", b"X-Y: \x1b[31m\r\n", None),
        ("high-byte-name", b"X-\xe9: 1\r\n", None),
        ("colon-in-name-start", b":X: 1\r\n", None),
        ("underscore-name", b"X_Y: 1\r\n", None),
        ("dot-name", b"X.Y: 1\r\n", None),
        ("quote-name", b"X\"Y: 1\r\n", None),
        ("leading-space-first-field", b" X: 1\r\n", None),
        (
            "proxy-connection",
            b"Proxy-Connection: keep-alive\r\n",
            None,
        ),
        ("keep-alive-field", b"Keep-Alive: timeout=5\r\n", None),
        ("te-trailers", b"TE: trailers\r\n", None),
        ("trailer-field", b"Trailer: X-Sum\r\n", None),
        ("connection-names-host", b"Connection: Host\r\n", None),
        (
            "connection-names-content-length",
            b"Connection: Content-Length\r\nContent-Length: 5\r\n",
            None,
        ),
        (
            "connection-names-te",
            b"Connection: Transfer-Encoding\r\n",
            None,
        ),
    ];
    for (name, f, why) in items {
        let mut bytes = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
        bytes.extend_from_slice(f);
        bytes.extend_from_slice(b"Content-Length: 5\r\n\r\nhello");
        bytes.extend_from_slice(GET2.as_bytes());
        let k = case(format!("field-{name}"), &bytes);
        c.push(k.strict_if(*why));
    }
    c.push(case("field-too-many", {
        let mut f = String::from("Host: a\r\n");
        for i in 0..200 {
            f.push_str(&format!("X-{i}: {i}\r\n"));
        }
        req("GET / HTTP/1.1", &f, b"")
    }));
    let n_fields = |n: usize| {
        let mut f = String::from("Host: a\r\n");
        for i in 1..n {
            f.push_str(&format!("X-{i}: {i}\r\n"));
        }
        req("GET / HTTP/1.1", &f, b"")
    };
    c.push(case("field-ninety-four", n_fields(94)));
    c.push(case("field-ninety-five", n_fields(95)).strict(
        "at most 94 fields in a request, so that with the fields steward adds it still fits an instance's limit (hyper: 100)",
    ));
}

const URI_HOST: &str = "RFC 3986 §3.2.2: a host is ASCII letters, digits and sub-delims; no `\\`, `?`, `#` (internationalised names travel as punycode)";

/// `Host` (RFC 9112 §3.2: exactly one on HTTP/1.1, valid).
fn hosts(c: &mut Vec<Case>) {
    let items: &[(&str, &str, Option<&'static str>)] = &[
        ("missing", "", None),
        ("two-same", "Host: a\r\nHost: a\r\n", None),
        ("two-different", "Host: a\r\nHost: b\r\n", None),
        ("empty", "Host:\r\n", None),
        ("port", "Host: a:8080\r\n", None),
        ("ipv4", "Host: 127.0.0.1\r\n", None),
        ("ipv6", "Host: [::1]:80\r\n", None),
        ("slash", "Host: a/b\r\n", None),
        ("backslash", "Host: a\\b\r\n", Some(URI_HOST)),
        (
            "at",
            "Host: user@a\r\n",
            Some("RFC 9110 §7.2: Host is uri-host [ \":\" port ]; userinfo is not part of it"),
        ),
        ("space", "Host: a b\r\n", None),
        ("leading-dot", "Host: .a\r\n", None),
        ("underscore", "Host: a_b.example\r\n", None),
        ("percent", "Host: a%2fb\r\n", None),
        ("question", "Host: a?b\r\n", Some(URI_HOST)),
        ("hash", "Host: a#b\r\n", Some(URI_HOST)),
        ("high-byte", "Host: caf\u{e9}\r\n", Some(URI_HOST)),
        ("space-before-colon", "Host : a\r\n", None),
    ];
    for (name, f, why) in items {
        let k = case(format!("host-{name}"), req("GET / HTTP/1.1", f, b""));
        c.push(k.strict_if(*why));
    }
    c.push(
        case(
            "host-absolute-form-other",
            req("GET http://b/x HTTP/1.1", "Host: a\r\n", b""),
        )
        .strict("RFC 9112 §3.2.2: an instance routes an absolute-form request by its target, steward's X-Forwarded-Host says Host: the two must agree"),
    );
    c.push(case(
        "host-absolute-form-http10",
        req("GET http://b:81/x HTTP/1.0", "", b""),
    ));
    c.push(
        case(
            "host-absolute-form-empty-authority",
            req("GET http://?/x HTTP/1.0", "", b""),
        )
        .strict("RFC 9110 §4.2.1: an http URI with an empty host is invalid and must be rejected"),
    );
    c.push(case(
        "host-absolute-form-same",
        req("GET http://a:80/x HTTP/1.1", "Host: A:80\r\n", b""),
    ));
    c.push(case(
        "host-http10-two",
        req("GET / HTTP/1.0", "Host: a\r\nHost: b\r\n", b""),
    ));
}

/// Keep-alive and pipelining (RFC 9112 §9.3).
fn persistence(c: &mut Vec<Case>) {
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: a\r\n\r\n");
    c.push(case("pipeline-two", format!("{}{}", get("/1"), get("/2"))));
    c.push(case(
        "pipeline-ten",
        (0..10).map(|i| get(&format!("/{i}"))).collect::<String>(),
    ));
    c.push(case(
        "pipeline-mixed-bodies",
        [
            get("/1").into_bytes(),
            req(
                "POST /2 HTTP/1.1",
                "Host: a\r\nContent-Length: 3\r\n",
                b"abc",
            ),
            req(
                "POST /3 HTTP/1.1",
                "Host: a\r\nTransfer-Encoding: chunked\r\n",
                b"2\r\nde\r\n0\r\n\r\n",
            ),
            get("/4").into_bytes(),
        ]
        .concat(),
    ));
    c.push(case(
        "pipeline-head-then-get",
        format!("HEAD /1 HTTP/1.1\r\nHost: a\r\n\r\n{}", get("/2")),
    ));
    c.push(case(
        "pipeline-close-then-more",
        format!(
            "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{}",
            get("/2")
        ),
    ));
    c.push(case(
        "pipeline-then-malformed",
        format!(
            "{}GET /bad path HTTP/1.1\r\nHost: a\r\n\r\n{}",
            get("/1"),
            get("/3")
        ),
    ));
    c.push(
        case(
            "pipeline-then-both-lengths",
            [
                get("/1").into_bytes(),
                req(
                    "POST /2 HTTP/1.1",
                    "Host: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                    b"0\r\n\r\n",
                ),
                get("/3").into_bytes(),
            ]
            .concat(),
        )
        .strict(
            "RFC 9112 §6.1: a message with both Content-Length and Transfer-Encoding is refused",
        ),
    );
    c.push(case(
        "pipeline-connection-close-case",
        format!(
            "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n{}",
            get("/2")
        ),
    ));
    c.push(case(
        "pipeline-connection-list-close",
        format!(
            "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n{}",
            get("/2")
        ),
    ));
    c.push(case(
        "http10-keep-alive-then-get",
        format!(
            "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{}",
            get("/2")
        ),
    ));
    c.push(case(
        "http10-default-close-then-get",
        format!("GET /1 HTTP/1.0\r\n\r\n{}", get("/2")),
    ));
    c.push(case(
        "http10-keep-alive-post-then-get",
        format!(
            "POST /1 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc{}",
            get("/2")
        ),
    ));
    c.push(case(
        "http10-keep-alive-no-length-body",
        format!(
            "POST /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nabc{}",
            get("/2")
        ),
    ));
    c.push(case(
        "http11-then-http10",
        format!("{}GET /2 HTTP/1.0\r\n\r\n", get("/1")),
    ));
    c.push(case(
        "pipeline-body-looks-like-request",
        req(
            "POST / HTTP/1.1",
            &format!("Host: a\r\nContent-Length: {}\r\n", SMUGGLED.len()),
            SMUGGLED.as_bytes(),
        ),
    ));
    c.push(case(
        "pipeline-chunk-looks-like-request",
        chunked(
            format!(
                "{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{}",
                SMUGGLED.len(),
                get("/after")
            )
            .as_bytes(),
        ),
    ));
}

/// `Expect` (RFC 9110 §10.1.1) and `Upgrade` (RFC 9110 §7.8).
fn expectations_and_upgrades(c: &mut Vec<Case>) {
    c.push(case(
        "expect-length",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "expect-chunked",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ));
    c.push(case(
        "expect-case",
        req(
            "POST / HTTP/1.1",
            "Host: a\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "expect-no-body",
        req("GET / HTTP/1.1", "Host: a\r\nExpect: 100-continue\r\n", b""),
    ));
    c.push(case(
        "expect-http10",
        req(
            "POST / HTTP/1.0",
            "Expect: 100-continue\r\nContent-Length: 5\r\n",
            b"hello",
        ),
    ));
    c.push(case(
        "expect-then-get",
        [
            req(
                "POST / HTTP/1.1",
                "Host: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n",
                b"hello",
            ),
            GET2.as_bytes().to_vec(),
        ]
        .concat(),
    ));
    c.push(case("expect-both-lengths", req("POST / HTTP/1.1", "Host: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")).strict("RFC 9112 §6.1: a message with both Content-Length and Transfer-Encoding is refused"));
    // An upgrade the instance declines leaves the connection in HTTP/1.1: the
    // bytes after the head are the next request, never a tunnel.
    let ws = "Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    c.push(case(
        "upgrade-declined-then-get",
        [
            req("GET /ws HTTP/1.1", ws, b""),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat(),
    ));
    c.push(case("upgrade-bad-version-then-get", [req("GET /ws HTTP/1.1", "Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 1337\r\n", b""), SMUGGLED.as_bytes().to_vec()].concat()));
    c.push(case("upgrade-h2c", req("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", b"")));
    c.push(case("upgrade-h2c-then-get", [req("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", b""), SMUGGLED.as_bytes().to_vec()].concat()));
    c.push(case(
        "upgrade-without-connection",
        [
            req("GET / HTTP/1.1", "Host: a\r\nUpgrade: websocket\r\n", b""),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat(),
    ));
    c.push(case(
        "upgrade-connection-only",
        [
            req("GET / HTTP/1.1", "Host: a\r\nConnection: upgrade\r\n", b""),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat(),
    ));
    c.push(case(
        "upgrade-with-body",
        [
            req(
                "POST /ws HTTP/1.1",
                "Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n",
                b"hello",
            ),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat(),
    ));
    c.push(case(
        "upgrade-http10",
        [
            req(
                "GET /ws HTTP/1.0",
                "Connection: Upgrade, keep-alive\r\nUpgrade: websocket\r\n",
                b"",
            ),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat(),
    ));
}
