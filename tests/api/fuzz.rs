//! Random and malformed requests: 100,000 through decoding, conversion and validation in
//! process, and a few thousand raw malformed frames and invalid requests to a real server. No
//! panic; every bad request is INVALID_ARGUMENT; nothing is written.

use bytes::{Buf, BufMut};
use highwater::{grpc::convert, pb};
use highwater_core::{
    error::Error,
    store::validate::{Limits, validate_append},
};
use prost::Message;
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::helpers::*;

/// A small, seeded generator (xorshift64*): the same inputs on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }

    /// Strings that validation must judge: empty, huge, control characters, odd Unicode, or fine.
    fn text(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => "x".repeat(self.below(600) as usize),
            2 => format!("a\u{0}b{}", self.below(10)),
            3 => "\u{7f}\n\t".into(),
            4 => "é🦀\u{200b}".repeat(self.below(80) as usize),
            5 => String::from_utf8_lossy(&self.bytes(40)).into_owned(),
            _ => format!("s-{}", self.below(1000)),
        }
    }

    fn append_request(&mut self) -> pb::AppendRequest {
        let events = (0..self.below(4))
            .map(|_| pb::ProposedEvent {
                id: match self.below(4) {
                    0 => String::new(),
                    1 => uuid::Uuid::new_v4().to_string(),
                    _ => self.text(),
                },
                r#type: self.text(),
                data: match self.below(4) {
                    0 => br#"{"ok":true}"#.to_vec(),
                    1 => b"{broken".to_vec(),
                    _ => self.bytes(64),
                }
                .into(),
                content_type: match self.below(4) {
                    0 => String::new(),
                    1 => "application/octet-stream".into(),
                    _ => self.text(),
                },
                metadata: (0..self.below(3))
                    .map(|_| (self.text(), self.text()))
                    .collect(),
            })
            .collect();
        pb::AppendRequest {
            stream: self.text(),
            expected: match self.below(4) {
                0 => None,
                1 => Some(pb::append_request::Expected::Revision(self.next())),
                _ => Some(pb::append_request::Expected::State(self.next() as i32 % 6)),
            },
            events,
        }
    }
}

/// Bytes that are not a valid encoding: random, truncated, or with corrupted bytes.
fn malformed(random: &mut Random) -> Vec<u8> {
    let valid = random.append_request().encode_to_vec();
    match random.below(3) {
        0 => random.bytes(256),
        1 if valid.len() > 1 => valid[..random.below(valid.len() as u64 - 1) as usize + 1].to_vec(),
        _ => {
            let mut bytes = valid;
            for _ in 0..=random.below(4) {
                let at = random.below(bytes.len().max(1) as u64) as usize;
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= random.next() as u8 | 1;
                } else {
                    bytes.push(0xff);
                }
            }
            bytes
        }
    }
}

#[test]
fn a_hundred_thousand_random_requests_decode_or_fail_and_validate_or_are_invalid_argument() {
    let mut random = Random(0x5eed_1234_abcd_0001);
    let limits = Limits {
        max_event_bytes: 1 << 20,
        max_append_bytes: 16 << 20,
        max_append_events: 10_000,
        ..Limits::default()
    };
    let (mut undecodable, mut invalid, mut valid) = (0, 0, 0);
    for round in 0..100_000 {
        // Alternate raw bytes and structured requests with random fields.
        let decoded = if round % 2 == 0 {
            pb::AppendRequest::decode(&malformed(&mut random)[..])
        } else {
            Ok(random.append_request())
        };
        let Ok(request) = decoded else {
            undecodable += 1;
            continue;
        };
        match convert::append_input(request).and_then(|input| validate_append(input, &limits)) {
            Ok(_) => valid += 1,
            Err(Error::InvalidArgument(violations)) => {
                assert!(!violations.is_empty());
                invalid += 1;
            }
            Err(other) => panic!("a bad request gave {other:?}, not INVALID_ARGUMENT"),
        }
        // The other decoders and conversions of request fields.
        let _ = pb::ReadStreamRequest::decode(&malformed(&mut random)[..]);
        let _ = pb::SubscribeAllRequest::decode(&malformed(&mut random)[..]);
        let _ = pb::RegisterProjectionRequest::decode(&malformed(&mut random)[..]);
        match convert::direction(random.next() as i32) {
            Ok(_) | Err(Error::InvalidArgument(_)) => {}
            Err(other) => panic!("direction gave {other:?}"),
        }
    }
    assert_eq!(undecodable + invalid + valid, 100_000);
    // The generator reaches every path.
    assert!(
        undecodable > 1000 && invalid > 10_000 && valid > 100,
        "{undecodable} {invalid} {valid}"
    );
}

/// Sends raw bytes as the request message, whatever they are.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Bytes that cannot decode as any message: a field with wire type 7, which does not exist.
fn undecodable(random: &mut Random) -> Vec<u8> {
    let mut bytes = vec![0x0f];
    bytes.extend(random.bytes(64));
    bytes
}

#[tokio::test]
async fn a_server_answers_malformed_frames_and_invalid_requests_with_invalid_argument() {
    let mut app = TestApp::spawn().await;
    let channel = Channel::from_shared(app.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut random = Random(0x5eed_0000_0000_0002);
    let methods = [
        "/highwater.v1.EventStoreService/Append",
        "/highwater.v1.EventStoreService/ReadStream",
        "/highwater.v1.EventStoreService/SaveCheckpoint",
        "/highwater.v1.AdminService/RegisterProjection",
    ];
    let mut grpc = tonic::client::Grpc::new(channel);
    for round in 0..2000 {
        let method = methods[round % methods.len()];
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                Request::new(undecodable(&mut random)),
                http::uri::PathAndQuery::from_static(method),
                RawCodec,
            )
            .await
            .expect_err("a malformed frame is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
    }
    // Structured requests that cannot be valid: no stream name, or no events.
    for round in 0..1000 {
        let mut request = random.append_request();
        if round % 2 == 0 {
            request.stream.clear();
        } else {
            request.events.clear();
        }
        let status = app.append(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // The server is fine, and nothing was written.
    app.append(append_request(
        "after-fuzz",
        None,
        vec![json_event("E", "{}")],
    ))
    .await
    .unwrap();
    assert_eq!(app.read_all().await.len(), 1);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted_before_it_is_read() {
    let mut app = TestApp::spawn_with(&["--max-append-bytes", "65536"]).await;
    let channel = Channel::from_shared(app.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    // The transport limit is --max-append-bytes plus 1 MiB of room for framing.
    let limit = 65536 + (1 << 20);
    for (method, size) in [
        ("/highwater.v1.EventStoreService/Append", limit + 1),
        ("/highwater.v1.EventStoreService/ReadStream", 8 << 20),
        ("/highwater.v1.AdminService/RegisterProjection", limit + 1),
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                Request::new(vec![0u8; size]),
                http::uri::PathAndQuery::from_static(method),
                RawCodec,
            )
            .await
            .expect_err("an oversized message is refused");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method}: {status:?}"
        );
        assert!(status.message().contains("over the limit"), "{status:?}");
    }
    // Under the transport limit, an append over --max-append-bytes is refused by validation,
    // with the field named.
    let big = pb::ProposedEvent {
        data: vec![b'1'; 70_000].into(),
        ..json_event("E", "1")
    };
    let status = app
        .append(append_request("big", None, vec![big]))
        .await
        .expect_err("over --max-append-bytes");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    app.append(append_request("after", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    assert_eq!(app.read_all().await.len(), 1);
}
