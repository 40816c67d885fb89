//! Golden bytes: the frame layout and one example of each message family, exactly as
//! docs/protocol.md shows them. A change of encoding fails here *and* must be reflected in
//! the document (each expected hex string is also looked up in the document).

use omnistock::protocol::*;

const DOC: &str = include_str!("../docs/protocol.md");

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts the bytes and that the document shows them (whitespace-normalised).
fn golden(name: &str, bytes: &[u8], expected: &str) {
    assert_eq!(hex(bytes), expected, "{name}");
    let flat: String = DOC.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(expected),
        "docs/protocol.md must show the {name} bytes: {expected}"
    );
}

#[test]
fn hello_frame() {
    let h = Hello {
        magic: MAGIC,
        version: 1,
        client_name: "ctl".into(),
        token: "s3".into(),
    };
    let f = frame_of(FrameKind::Hello, 0, &h).unwrap();
    golden("Hello", &f.encode(), "24 00 00 00 01 00 00 00 00 00 00 00 00 4f 4d 4e 49 01 00 03 00 00 00 00 00 00 00 63 74 6c 02 00 00 00 00 00 00 00 73 33");
    assert_eq!(Frame::parse(&f.encode(), 1024).unwrap().unwrap().0, f);
}

#[test]
fn welcome_frame() {
    let w = Welcome {
        version: 1,
        server_name: "omni".into(),
        max_frame_bytes: 1048576,
        max_batch_ops: 8190,
        max_lines_per_reservation: 100,
        max_in_flight: 1024,
    };
    let f = frame_of(FrameKind::Welcome, 0, &w).unwrap();
    golden("Welcome", &f.encode(), "27 00 00 00 02 00 00 00 00 00 00 00 00 01 00 04 00 00 00 00 00 00 00 6f 6d 6e 69 00 00 10 00 fe 1f 00 00 64 00 00 00 00 04 00 00");
}

#[test]
fn error_frame() {
    let f = frame_of(
        FrameKind::Error,
        0,
        &ErrorFrame {
            status: 103,
            message: "bad".into(),
        },
    )
    .unwrap();
    golden(
        "Error",
        &f.encode(),
        "16 00 00 00 05 00 00 00 00 00 00 00 00 67 00 03 00 00 00 00 00 00 00 62 61 64",
    );
}

#[test]
fn ping_request_frame() {
    let f = frame_of(
        FrameKind::Request,
        1,
        &RequestBatch {
            ops: vec![Op::Ping.to_raw().unwrap()],
        },
    )
    .unwrap();
    golden("ping Request", &f.encode(), "1b 00 00 00 03 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00");
}

#[test]
fn reserve_request_frame() {
    let op = Op::Reserve(Reserve {
        request_id: 1,
        reservation: 2,
        channel: "web".into(),
        lines: vec![WireLine {
            sku: "A".into(),
            qty: 3,
            location: None,
        }],
        allow_split: false,
        ttl_ms: 60000,
    });
    let f = frame_of(
        FrameKind::Request,
        2,
        &RequestBatch {
            ops: vec![op.to_raw().unwrap()],
        },
    )
    .unwrap();
    golden("reserve Request", &f.encode(), "65 00 00 00 03 02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 01 4a 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 60 ea 00 00 00 00 00 00");
    let back: RequestBatch = decode_payload(&f.payload).unwrap();
    assert_eq!(Op::from_raw(&back.ops[0]).unwrap(), Some(op));
}

#[test]
fn reserved_response_frame() {
    let body = encode_payload(&Reserved {
        seq: 5,
        expires_at_ms: 1000,
        allocations: vec![WireAllocation {
            sku: "A".into(),
            location: "wh".into(),
            qty: 3,
        }],
    })
    .unwrap();
    let r = ResponseBatch {
        results: vec![OpResult {
            status: 0,
            message: String::new(),
            body,
        }],
    };
    let f = frame_of(FrameKind::Response, 2, &r).unwrap();
    golden("reserve Response", &f.encode(), "52 00 00 00 04 02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 2f 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 e8 03 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 02 00 00 00 00 00 00 00 77 68 03 00 00 00");
}

#[test]
fn rejection_result() {
    let facts = encode_payload(&InsufficientFacts {
        line: 0,
        sku: "A".into(),
        requested: 3,
        available: 1,
    })
    .unwrap();
    let r = OpResult {
        status: 1,
        message: "no".into(),
        body: facts,
    };
    golden("InsufficientStock result", &encode_payload(&r).unwrap(), "01 00 02 00 00 00 00 00 00 00 6e 6f 13 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 01 00 00 00");
}

#[test]
fn stock_catalog_and_read_bodies() {
    let adj = Op::Adjust(Adjust {
        request_id: 1,
        sku: "A".into(),
        location: "wh".into(),
        delta: -2,
        reason: WireAdjustReason::Shrinkage,
        reference: String::new(),
    });
    golden("adjust body", &adj.to_raw().unwrap().body, "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 02 00 00 00 00 00 00 00 77 68 fe ff ff ff ff ff ff ff 01 00 00 00 00 00 00 00 00 00 00 00");
    let loc = Op::UpsertLocation(UpsertLocation {
        request_id: 1,
        location: WireLocation {
            id: "wh".into(),
            kind: WireLocationKind::Store,
            region: "FR".into(),
        },
    });
    golden("upsert location body", &loc.to_raw().unwrap().body, "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68 01 00 00 00 02 00 00 00 00 00 00 00 46 52");
    golden(
        "get sku body",
        &Op::GetSku(GetSku { sku: "A".into() })
            .to_raw()
            .unwrap()
            .body,
        "01 00 00 00 00 00 00 00 41",
    );
    let sku = WireSku {
        sku: "A".into(),
        buckets: vec![WireBucket {
            location: "wh".into(),
            on_hand: 5,
            reserved: 3,
            safety_stock: 0,
            damaged: 0,
            quality_control: 0,
            incoming: 0,
            incoming_eta_ms: 0,
            atp: 2,
        }],
        channels: vec![("web".into(), 2)],
        oversold: false,
        holds: 1,
        last_seq: 9,
    };
    golden("get sku result", &encode_payload(&sku).unwrap(), "01 00 00 00 00 00 00 00 41 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68 05 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 02 00 00 00 00 01 00 00 00 09 00 00 00 00 00 00 00");
}

#[test]
fn opcode_and_status_numbers_are_stable() {
    use omnistock::protocol::ops::opcode::*;
    assert_eq!(
        [PING, SERVER_INFO, RESERVE, FULFILL, RELEASE, EXTEND],
        [0x0001, 0x0002, 0x0101, 0x0102, 0x0103, 0x0104]
    );
    assert_eq!(
        [
            ADJUST,
            SET_ON_HAND,
            MOVE,
            TRANSFER,
            SET_SAFETY_STOCK,
            SET_INCOMING
        ],
        [0x0201, 0x0202, 0x0203, 0x0204, 0x0205, 0x0206]
    );
    assert_eq!(
        [
            UPSERT_LOCATION,
            UPSERT_CHANNEL,
            LIST_LOCATIONS,
            LIST_CHANNELS
        ],
        [0x0301, 0x0302, 0x0303, 0x0304]
    );
    assert_eq!(
        [
            GET_SKU,
            GET_SKUS,
            GET_RESERVATION,
            SUBSCRIBE,
            UNSUBSCRIBE,
            ACK,
            SKU_HISTORY
        ],
        [0x0401, 0x0402, 0x0403, 0x0501, 0x0502, 0x0503, 0x0601]
    );
    assert_eq!(
        [
            status::STORAGE_FAILURE,
            status::SHUTTING_DOWN,
            status::PROTOCOL_ERROR,
            status::UNAUTHORIZED,
            status::FORBIDDEN,
            status::NOT_IMPLEMENTED
        ],
        [100, 101, 102, 103, 104, 105]
    );
    assert_eq!(
        [
            status::UNKNOWN_OPERATION,
            status::TOO_MANY_OPERATIONS,
            status::LIMIT_EXCEEDED,
            status::IDLE_TIMEOUT,
            status::INTERNAL_ERROR,
            status::UNSUPPORTED_VERSION
        ],
        [106, 107, 108, 109, 110, 111]
    );
    assert_eq!(FrameKind::from_u8(6), Some(FrameKind::Push));
}

#[test]
fn zz_dump_tmp() {
    let sub = Subscribe {
        name: "erp".into(),
        start: start::AFTER,
        from_seq: 41,
        channels: vec!["web".into()],
        skus: vec![],
        sku_prefix: String::new(),
        kinds: kinds::ALL,
        coalesce_ms: 0,
    };
    let op = Op::Subscribe(sub.clone());
    println!("SUBBODY {}", hex(&op.to_raw().unwrap().body));
    let f = frame_of(
        FrameKind::Request,
        7,
        &RequestBatch {
            ops: vec![op.to_raw().unwrap()],
        },
    )
    .unwrap();
    println!("SUBFRAME {} len {}", hex(&f.encode()), f.encode().len());
    let ans = Subscribed {
        start: started::REPLAY,
        from_seq: 41,
        head_seq: 57,
        retained_from_seq: 1,
        note: String::new(),
    };
    let body = encode_payload(&ans).unwrap();
    println!("SUBSCRIBED body {}", hex(&body));
    let r = ResponseBatch {
        results: vec![OpResult {
            status: 0,
            message: String::new(),
            body,
        }],
    };
    println!(
        "SUBRESP {}",
        hex(&frame_of(FrameKind::Response, 7, &r).unwrap().encode())
    );
    let push = PushBatch {
        items: vec![
            PushItem::Atp(WireAtp {
                seq: 42,
                at_ms: 1_700_000_000_000,
                sku: "A".into(),
                channel: "web".into(),
                previous: 3,
                atp: 0,
                cause: cause::RESERVE,
                transition: transition::OUT_OF_STOCK,
                coalesced: false,
            }),
            PushItem::Position { seq: 45 },
        ],
    };
    println!(
        "PUSH {}",
        hex(&frame_of(FrameKind::Push, 7, &push).unwrap().encode())
    );
    println!(
        "ACK {}",
        hex(&Op::Ack(Ack {
            name: "erp".into(),
            seq: 45
        })
        .to_raw()
        .unwrap()
        .body)
    );
    println!(
        "LOW {}",
        hex(&Op::SetLowStock(SetLowStock {
            request_id: 1,
            channel: "web".into(),
            sku: Some("A".into()),
            threshold: 5
        })
        .to_raw()
        .unwrap()
        .body)
    );
    println!(
        "LOWCH {}",
        hex(&Op::SetLowStock(SetLowStock {
            request_id: 2,
            channel: "web".into(),
            sku: None,
            threshold: 10
        })
        .to_raw()
        .unwrap()
        .body)
    );
    let items = vec![
        PushItem::Oversold(WireOversold {
            seq: 43,
            at_ms: 1_700_000_000_000,
            sku: "A".into(),
            oversold: true,
        }),
        PushItem::Reservation(WireReservationEvent {
            seq: 42,
            at_ms: 1_700_000_000_000,
            sku: "A".into(),
            reservation: 2,
            kind: lifecycle::PLACED,
            qty: 3,
            expires_at_ms: 1_700_000_060_000,
        }),
        PushItem::Catalog {
            seq: 44,
            at_ms: 1_700_000_000_000,
        },
        PushItem::Snapshot(WireSnapshotEntry {
            seq: 9,
            sku: "A".into(),
            channel: "web".into(),
            atp: 2,
            oversold: false,
        }),
        PushItem::SnapshotEnd { seq: 57 },
        PushItem::Position { seq: 45 },
        PushItem::Lagged {
            resume_from_seq: 45,
            message: "lag".into(),
        },
    ];
    for i in items {
        println!("ITEM {:?}\n  {}", i, hex(&encode_payload(&i).unwrap()));
    }
    println!("ATPITEM {}", hex(&encode_payload(&push.items[0]).unwrap()));
    println!(
        "PUSHEMPTY {}",
        hex(&encode_payload(&PushBatch { items: vec![] }).unwrap())
    );
    println!("UNSUB {}", hex(&Op::Unsubscribe.to_raw().unwrap().body));
}
