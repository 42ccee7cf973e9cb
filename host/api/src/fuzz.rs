//! Fuzz targets for the API server's decoders of network input (see fuzz/driver.rs): request
//! bodies (JSON, YAML, protobuf), the SPDY/3.1 codec of `kubectl port-forward` and service
//! account tokens (JWS). In the crate so the private decoders are reachable; `cargo test -p
//! kedge-api --lib fuzz` runs them for `KEDGE_FUZZ_SECS` each.

#[path = "../../../fuzz/driver.rs"]
mod driver;

use bytes::BytesMut;
use driver::{run, target, text};
use serde_json::Value;

const JSON_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "1e999",
    "-0",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"apiVersion\"",
    "\"kind\"",
    "\"metadata\"",
    "[[[[[[[[",
    "{\"a\":{\"a\":",
];

#[test]
fn fuzz_body_json() {
    run(target("body_json", 64 << 10, JSON_DICT), |b| {
        crate::body::json(b).is_ok()
    });
}

#[test]
fn fuzz_body_yaml() {
    let dict = &[
        "- ",
        ": ",
        "\n",
        "\n  ",
        "&a ",
        "*a",
        "<<: *a",
        "!!binary ",
        "!!str ",
        "---\n",
        "...\n",
        "{",
        "}",
        "[",
        "]",
        "? ",
        "|\n",
        ">-\n",
        "'",
        "\"",
        "#",
        "%YAML 1.2\n",
        "~",
        "0x1F",
        "1e3",
        ".inf",
        "yes",
        "[*a, *a, *a]",
        "a: &a [1, 2]\n",
    ];
    run(target("body_yaml", 64 << 10, dict), |b| {
        let Ok(v) = crate::body::yaml(b) else {
            return false;
        };
        // Whatever YAML decoded to is a JSON value the JSON decoder reads back the same
        // (floats to the last digit or so: serde_json's shortest printing and its fast parse
        // may differ in the final ulp, e.g. 7.777777777777779e99 read back as …778e99).
        let s = serde_json::to_vec(&v).unwrap();
        let back = crate::body::json(&s).expect("our own JSON decodes");
        assert!(same_value(&back, &v), "{back} != {v}");
        true
    });
}

/// JSON equality with floats compared to a relative 1e-12.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn fuzz_protobuf_body() {
    let dict = &[
        "k8s\0", "\x0a", "\x12", "\x1a", "\x22", "\x08", "\x10", "\x7f", "\x01", "\x00",
    ];
    run(target("protobuf_body", 64 << 10, dict), |b| {
        crate::protobuf::decode(b).is_ok()
    });
}

#[test]
fn fuzz_spdy_frames() {
    use crate::spdy::{Decoder, Encoder};
    let dict = &[
        "\x03\x00\x01",
        "\x03\x00\x02",
        "\x03\x00\x03",
        "\x03\x00\x04",
        "\x03\x00\x06",
        "\x03\x00\x07",
        "\x03\x00\x08",
        "\x03\x00\x09",
        "\x00\x00\x00\x01",
        "\x01",
        "\x00",
    ];
    run(target("spdy_frames", 64 << 10, dict), |b| {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(b);
        let (mut enc, mut redec) = (Encoder::default(), Decoder::default());
        let mut any = false;
        // A bounded number of frames: each takes at least 8 bytes.
        for _ in 0..=b.len() / 8 {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    any = true;
                    // Round trip: what we would send for this frame decodes back to it.
                    let mut out = BytesMut::new();
                    // (Unknown control frames are skipped on receipt and never sent.)
                    if !matches!(frame, crate::spdy::Frame::Unknown(_))
                        && enc.encode(&frame, &mut out).is_ok()
                    {
                        let back = redec
                            .decode(&mut out)
                            .expect("our own frame decodes")
                            .expect("our own frame is complete");
                        assert_eq!(back, frame);
                        assert!(out.is_empty());
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        any
    });
}

#[test]
fn fuzz_service_account_token() {
    let signer = crate::tokens::Signer::generate().unwrap();
    let now = 1_800_000_000;
    let dict = &[
        ".",
        "eyJ",
        "eyJhbGciOiJFUzI1NiJ9",
        "eyJhbGciOiJub25lIn0",
        "\"exp\"",
        "\"nbf\"",
        "\"iat\"",
        "\"aud\"",
        "\"sub\"",
        "\"kubernetes.io\"",
        "1800000000",
        "-1",
        "9e99",
    ];
    run(target("service_account_token", 16 << 10, dict), |b| {
        // The bytes as a bearer token…
        let from_token = signer.verify(&text(b), now).is_ok();
        // …and as claims this server signs, which verify to themselves when in date.
        let Ok(claims @ Value::Object(_)) = serde_json::from_slice::<Value>(b) else {
            return from_token;
        };
        let token = signer.sign(&claims);
        if let Ok(back) = signer.verify(&token, now) {
            assert_eq!(back, claims);
        }
        true
    });
}

#[test]
fn fuzz_port_forward_ports() {
    let dict = &[
        "ports=", "&", ",", "%2C", "+", "65535", "65536", "0", "-1", "80",
    ];
    run(target("port_forward_ports", 4096, dict), |b| {
        let q = text(b);
        match crate::stream::channel_ports(Some(&q)) {
            Ok(ports) => {
                assert!((1..=127).contains(&ports.len()) && !ports.contains(&0));
                true
            }
            Err(_) => false,
        }
    });
}
