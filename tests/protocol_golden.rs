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
            shortfall: 0,
        }],
        channels: vec![("web".into(), 2)],
        oversold: false,
        holds: 1,
        last_seq: 9,
    };
    golden("get sku result", &encode_payload(&sku).unwrap(), "01 00 00 00 00 00 00 00 41 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68 05 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 02 00 00 00 00 01 00 00 00 09 00 00 00 00 00 00 00");
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
            LIST_CHANNELS,
            SET_LOW_STOCK,
            DELETE_LOCATION,
            DELETE_CHANNEL,
            SET_STOCKOUT_THRESHOLD
        ],
        [0x0301, 0x0302, 0x0303, 0x0304, 0x0305, 0x0306, 0x0307, 0x0308]
    );
    assert_eq!(
        [
            GET_SKU,
            GET_SKUS,
            GET_RESERVATION,
            SUBSCRIBE,
            UNSUBSCRIBE,
            ACK,
            LIST_SUBSCRIPTIONS,
            DELETE_SUBSCRIPTION,
            SKU_HISTORY
        ],
        [0x0401, 0x0402, 0x0403, 0x0501, 0x0502, 0x0503, 0x0504, 0x0505, 0x0601]
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
    assert_eq!(status::TLS_REQUIRED, 112);
    assert_eq!(FrameKind::from_u8(6), Some(FrameKind::Push));
}

// ---- subscriptions and low-stock thresholds (docs/protocol.md sections 7 and 11) --------

const AT_MS: u64 = 1_700_000_000_000;

fn atp_item() -> PushItem {
    PushItem::Atp(WireAtp {
        seq: 42,
        at_ms: AT_MS,
        sku: "A".into(),
        channel: "web".into(),
        previous: 3,
        atp: 0,
        cause: cause::RESERVE,
        transition: transition::OUT_OF_STOCK,
        coalesced: false,
    })
}

#[test]
fn subscribe_request_frame() {
    let op = Op::Subscribe(Subscribe {
        name: "erp".into(),
        start: start::AFTER,
        from_seq: 41,
        channels: vec!["web".into()],
        skus: vec![],
        sku_prefix: String::new(),
        // The three kinds of the first release (7): the bytes docs/protocol.md shows.
        kinds: kinds::ATP | kinds::THRESHOLDS | kinds::RESERVATIONS,
        coalesce_ms: 0,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, 0x0501);
    golden("subscribe body", &raw.body, "03 00 00 00 00 00 00 00 65 72 70 02 29 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 07 00 00 00 00");
    let f = frame_of(FrameKind::Request, 7, &RequestBatch { ops: vec![raw] }).unwrap();
    golden("subscribe Request", &f.encode(), "57 00 00 00 03 07 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 05 3c 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 65 72 70 02 29 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 07 00 00 00 00");
    let back: RequestBatch = decode_payload(&f.payload).unwrap();
    assert_eq!(Op::from_raw(&back.ops[0]).unwrap(), Some(op));
}

#[test]
fn subscribed_response_frame() {
    let body = encode_payload(&Subscribed {
        start: started::REPLAY,
        from_seq: 41,
        head_seq: 57,
        retained_from_seq: 1,
        note: String::new(),
        heartbeat_ms: 15_000,
    })
    .unwrap();
    let r = ResponseBatch {
        results: vec![OpResult {
            status: 0,
            message: String::new(),
            body,
        }],
    };
    let f = frame_of(FrameKind::Response, 7, &r).unwrap();
    golden("subscribed Response", &f.encode(), "48 00 00 00 04 07 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 25 00 00 00 00 00 00 00 02 29 00 00 00 00 00 00 00 39 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 98 3a 00 00");
}

#[test]
fn unsubscribe_and_ack_bodies() {
    let raw = Op::Unsubscribe.to_raw().unwrap();
    assert_eq!((raw.opcode, raw.body.len()), (0x0502, 0));
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(Op::Unsubscribe));
    let op = Op::Ack(Ack {
        name: "erp".into(),
        seq: 45,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, 0x0503);
    golden(
        "ack body",
        &raw.body,
        "03 00 00 00 00 00 00 00 65 72 70 2d 00 00 00 00 00 00 00",
    );
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    // UNSUBSCRIBE and ACK answer `Empty`: a 0-byte body.
    assert!(encode_payload(&Empty {}).unwrap().is_empty());
}

#[test]
fn set_low_stock_bodies() {
    let sku = Op::SetLowStock(SetLowStock {
        request_id: 1,
        channel: "web".into(),
        sku: Some("A".into()),
        threshold: 5,
    });
    let raw = sku.to_raw().unwrap();
    assert_eq!(raw.opcode, 0x0305);
    assert_eq!(sku.request_id(), Some(1));
    golden("set low stock body (SKU override)", &raw.body, "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 01 01 00 00 00 00 00 00 00 41 05 00 00 00");
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(sku));
    let channel = Op::SetLowStock(SetLowStock {
        request_id: 2,
        channel: "web".into(),
        sku: None,
        threshold: 10,
    });
    golden("set low stock body (channel)", &channel.to_raw().unwrap().body, "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 00 0a 00 00 00");
}

#[test]
fn delete_location_and_channel_bodies_and_in_use_facts() {
    use omnistock::protocol::ops::opcode::{DELETE_CHANNEL, DELETE_LOCATION};
    let loc = Op::DeleteLocation(DeleteLocation {
        request_id: 1,
        location: "wh".into(),
    });
    let raw = loc.to_raw().unwrap();
    assert_eq!((raw.opcode, loc.request_id()), (0x0306, Some(1)));
    golden(
        "delete location body",
        &raw.body,
        "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68",
    );
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(loc));
    let ch = Op::DeleteChannel(DeleteChannel {
        request_id: 2,
        channel: "web".into(),
    });
    let raw = ch.to_raw().unwrap();
    assert_eq!((raw.opcode, ch.request_id()), (0x0307, Some(2)));
    golden(
        "delete channel body",
        &raw.body,
        "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62",
    );
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(ch));
    let location = InUseFacts {
        kind: in_use_kind::LOCATION,
        id: "wh".into(),
        channels: vec!["web".into()],
        channels_total: 1,
        skus_with_stock: 2,
        skus_with_holds: 1,
        skus_with_safety_stock: 0,
        example_sku: "A".into(),
        reservations: 0,
        example_reservation: 0,
    };
    golden("in_use facts (location)", &encode_payload(&location).unwrap(), "01 02 00 00 00 00 00 00 00 77 68 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 01 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    let channel = InUseFacts {
        kind: in_use_kind::CHANNEL,
        id: "web".into(),
        channels: vec![],
        channels_total: 0,
        skus_with_stock: 0,
        skus_with_holds: 0,
        skus_with_safety_stock: 0,
        example_sku: String::new(),
        reservations: 1,
        example_reservation: 5,
    };
    golden("in_use facts (channel)", &encode_payload(&channel).unwrap(), "02 03 00 00 00 00 00 00 00 77 65 62 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    assert_eq!(
        decode_payload::<InUseFacts>(&encode_payload(&channel).unwrap()).unwrap(),
        channel
    );
    assert_eq!(status::name(17), "in_use");
    assert!(!status::is_retriable(17));
    // Admin only, like every catalog write.
    for op in [DELETE_LOCATION, DELETE_CHANNEL] {
        assert!(Role::Admin.may(op), "{op:#06x}");
        assert!(
            !Role::Adapter.may(op) && !Role::Checkout.may(op),
            "{op:#06x}"
        );
        assert!(!omnistock::protocol::ops::is_reserved(op));
    }
}

#[test]
fn push_frame_atp_and_position() {
    let push = PushBatch {
        items: vec![atp_item(), PushItem::Position { seq: 45 }],
    };
    let f = frame_of(FrameKind::Push, 7, &push).unwrap();
    golden("Push frame", &f.encode(), "50 00 00 00 06 07 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 03 00 00 00 00 00 00 00 01 01 00 06 00 00 00 2d 00 00 00 00 00 00 00");
    let parsed = Frame::parse(&f.encode(), 1024).unwrap().unwrap().0;
    assert_eq!(parsed.kind, FrameKind::Push);
    assert_eq!(decode_payload::<PushBatch>(&parsed.payload).unwrap(), push);
}

#[test]
fn push_batch_with_every_item() {
    // Each item as docs/protocol.md section 11.12 shows it; a `PushBatch` is the u64 count
    // followed by the items.
    let items: Vec<(&str, PushItem, &str)> = vec![
        ("Atp item", atp_item(), "00 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 03 00 00 00 00 00 00 00 01 01 00"),
        (
            "Oversold item",
            PushItem::Oversold(WireOversold {
                seq: 43,
                at_ms: AT_MS,
                sku: "A".into(),
                oversold: true,
            }),
            "01 00 00 00 2b 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 01",
        ),
        (
            "Reservation item",
            PushItem::Reservation(WireReservationEvent {
                seq: 42,
                at_ms: AT_MS,
                sku: "A".into(),
                reservation: 2,
                kind: lifecycle::PLACED,
                qty: 3,
                expires_at_ms: AT_MS + 60_000,
            }),
            "02 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 03 00 00 00 60 52 e6 cf 8b 01 00 00",
        ),
        (
            "Catalog item",
            PushItem::Catalog {
                seq: 44,
                at_ms: AT_MS,
            },
            "03 00 00 00 2c 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00",
        ),
        (
            "Snapshot item",
            PushItem::Snapshot(WireSnapshotEntry {
                seq: 9,
                sku: "A".into(),
                channel: "web".into(),
                atp: 2,
                oversold: false,
            }),
            "04 00 00 00 09 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 02 00 00 00 00",
        ),
        (
            "SnapshotEnd item",
            PushItem::SnapshotEnd { seq: 57 },
            "05 00 00 00 39 00 00 00 00 00 00 00",
        ),
        (
            "Position item",
            PushItem::Position { seq: 45 },
            "06 00 00 00 2d 00 00 00 00 00 00 00",
        ),
        (
            "Lagged item",
            PushItem::Lagged {
                resume_from_seq: 45,
                message: "lag".into(),
            },
            "07 00 00 00 2d 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 6c 61 67",
        ),
    ];
    let mut expected = vec!["08 00 00 00 00 00 00 00".to_string()];
    for (name, item, hex_item) in &items {
        golden(name, &encode_payload(item).unwrap(), hex_item);
        expected.push(hex_item.to_string());
    }
    let batch = PushBatch {
        items: items.into_iter().map(|(_, i, _)| i).collect(),
    };
    let bytes = encode_payload(&batch).unwrap();
    assert_eq!(hex(&bytes), expected.join(" "), "PushBatch of every item");
    assert_eq!(decode_payload::<PushBatch>(&bytes).unwrap(), batch);
}

#[test]
fn subscription_constants_are_stable() {
    assert_eq!(
        [start::LIVE, start::SNAPSHOT, start::AFTER, start::RESUME],
        [0, 1, 2, 3]
    );
    assert_eq!(
        [
            kinds::ATP,
            kinds::THRESHOLDS,
            kinds::RESERVATIONS,
            kinds::STOCKOUT,
            kinds::REBALANCE,
            kinds::REGION_STOCKOUT,
            kinds::ALL
        ],
        [1, 2, 4, 8, 16, 32, 63]
    );
    assert_eq!(
        [started::LIVE, started::SNAPSHOT, started::REPLAY],
        [0, 1, 2]
    );
    assert_eq!(
        [
            cause::RESERVE,
            cause::FULFILL,
            cause::RELEASE,
            cause::EXPIRY,
            cause::CART_ABORT,
            cause::RECOVERY,
            cause::ADJUST,
            cause::SET_ON_HAND,
            cause::MOVE,
            cause::TRANSFER,
            cause::SAFETY_STOCK,
            cause::INCOMING,
            cause::EXTEND
        ],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    );
    assert_eq!(
        [
            transition::NONE,
            transition::OUT_OF_STOCK,
            transition::BACK_IN_STOCK,
            transition::LOW_STOCK,
            transition::LOW_STOCK_CLEARED
        ],
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        [
            lifecycle::PLACED,
            lifecycle::FULFILLED,
            lifecycle::RELEASED,
            lifecycle::EXPIRED,
            lifecycle::EXTENDED,
            lifecycle::UNDONE
        ],
        [1, 2, 3, 4, 5, 6]
    );
}

#[test]
fn roles_of_the_new_operations() {
    use omnistock::protocol::ops::is_reserved;
    use omnistock::protocol::ops::opcode::*;
    for op in [SUBSCRIBE, UNSUBSCRIBE, ACK] {
        assert!(Role::Adapter.may(op) && Role::Admin.may(op), "{op:#06x}");
        assert!(!Role::Checkout.may(op), "{op:#06x}");
        assert!(!is_reserved(op), "{op:#06x} is implemented");
    }
    assert!(Role::Admin.may(SET_LOW_STOCK));
    assert!(!Role::Adapter.may(SET_LOW_STOCK) && !Role::Checkout.may(SET_LOW_STOCK));
    assert!(!is_reserved(SET_LOW_STOCK));
    // The last reserved opcode is implemented now (adapter and admin, like the feed).
    assert!(!is_reserved(SKU_HISTORY));
    assert!(Role::Adapter.may(SKU_HISTORY) && Role::Admin.may(SKU_HISTORY));
    assert!(!Role::Checkout.may(SKU_HISTORY));
    assert!(Role::Admin.may(SET_STOCKOUT_THRESHOLD));
    assert!(!Role::Adapter.may(SET_STOCKOUT_THRESHOLD));
    assert!(!Role::Checkout.may(SET_STOCKOUT_THRESHOLD));
    assert!(!is_reserved(SET_STOCKOUT_THRESHOLD));
}

#[test]
fn explain_atp_bodies() {
    use omnistock::protocol::ops::opcode::EXPLAIN_ATP;
    assert_eq!(EXPLAIN_ATP, 0x0404);
    for role in [Role::Checkout, Role::Adapter, Role::Admin] {
        assert!(role.may(EXPLAIN_ATP), "{role:?} may explain (a read)");
    }
    assert!(!omnistock::protocol::ops::is_reserved(EXPLAIN_ATP));
    let op = Op::ExplainAtp(ExplainAtp {
        sku: "A".into(),
        channel: "web".into(),
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, EXPLAIN_ATP);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "explain atp body",
        &raw.body,
        "01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62",
    );
    // A; web sells from wh (5 on hand, 3 reserved, 1 safety: adds 1), buffer 0, cap 1;
    // 1 hold of web (3 units, all at wh); channel threshold 2 (in band); seq 9.
    let e = WireAtpExplanation {
        sku: "A".into(),
        channel: "web".into(),
        locations: vec![WireAtpPart {
            location: "wh".into(),
            on_hand: 5,
            reserved: 3,
            safety_stock: 1,
            damaged: 0,
            quality_control: 0,
            shortfall: 0,
            atp: 1,
            contribution: 1,
        }],
        sum: 1,
        buffer: 0,
        withheld_by_buffer: 0,
        cap: Some(1),
        withheld_by_cap: 0,
        atp: 1,
        holds: vec![WireChannelHolds {
            channel: "web".into(),
            holds: 1,
            units: 3,
            units_here: 3,
        }],
        low_stock_threshold: 2,
        low_stock_source: WireLowStockSource::Channel,
        low_stock: true,
        last_seq: 9,
    };
    golden("explain atp result", &encode_payload(&e).unwrap(), "01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68 05 00 00 00 03 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 01 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 01 00 00 00 03 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 02 00 00 00 01 00 00 00 01 09 00 00 00 00 00 00 00");
}

#[test]
fn velocity_and_at_risk_bodies() {
    use omnistock::protocol::ops::opcode::{AT_RISK, VELOCITY};
    assert_eq!((VELOCITY, AT_RISK), (0x0405, 0x0406));
    for role in [Role::Checkout, Role::Adapter, Role::Admin] {
        assert!(role.may(VELOCITY), "{role:?} may read a velocity");
    }
    // AT_RISK reads every SKU: not for checkout services.
    assert!(Role::Adapter.may(AT_RISK) && Role::Admin.may(AT_RISK));
    assert!(!Role::Checkout.may(AT_RISK));
    let op = Op::Velocity(GetVelocity { sku: "A".into() });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, VELOCITY);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden("velocity body", &raw.body, "01 00 00 00 00 00 00 00 41");
    let op = Op::AtRisk(AtRiskQuery {
        channel: "web".into(),
        window: 1,
        limit: 10,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, AT_RISK);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "at risk body",
        &raw.body,
        "03 00 00 00 00 00 00 00 77 65 62 01 0a 00 00 00",
    );
    // A on web: ATP 4; windows 15 min (held 8/h: 0.5 h to zero), 1 h (held 2/h, fulfilled
    // 1/h: 2 h), 24 h (no demand: None).
    let w = |half_life_ms, held_per_hour, fulfilled_per_hour, hours_to_zero| WireWindowRate {
        half_life_ms,
        held_per_hour,
        fulfilled_per_hour,
        hours_to_zero,
    };
    let v = WireVelocity {
        sku: "A".into(),
        channels: vec![WireChannelVelocity {
            channel: "web".into(),
            atp: 4,
            windows: vec![
                w(900_000, 8.0, 0.0, Some(0.5)),
                w(3_600_000, 2.0, 1.0, Some(2.0)),
                w(86_400_000, 0.0, 0.0, None),
            ],
        }],
        regions: Vec::new(),
    };
    // The same demand at wh, the one location of region FR, whose ATP is also 4.
    let v = WireVelocity {
        regions: vec![WireRegionVelocity {
            region: "FR".into(),
            atp: 4,
            windows: v.channels[0].windows.clone(),
        }],
        ..v
    };
    golden(
        "velocity result",
        &encode_payload(&v).unwrap(),
        "01 00 00 00 00 00 00 00 41 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 04 00 00 00 03 00 00 00 00 00 00 00 a0 bb 0d 00 00 00 00 00 00 00 00 00 00 00 20 40 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 e0 3f 80 ee 36 00 00 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 f0 3f 01 00 00 00 00 00 00 00 40 00 5c 26 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 46 52 04 00 00 00 03 00 00 00 00 00 00 00 a0 bb 0d 00 00 00 00 00 00 00 00 00 00 00 20 40 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 e0 3f 80 ee 36 00 00 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 f0 3f 01 00 00 00 00 00 00 00 40 00 5c 26 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    );
    let list = WireAtRisk {
        channel: "web".into(),
        window: 1,
        skus: vec![WireAtRiskSku {
            sku: "A".into(),
            velocity: v.channels[0].clone(),
        }],
    };
    golden(
        "at risk result",
        &encode_payload(&list).unwrap(),
        "03 00 00 00 00 00 00 00 77 65 62 01 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 04 00 00 00 03 00 00 00 00 00 00 00 a0 bb 0d 00 00 00 00 00 00 00 00 00 00 00 20 40 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 e0 3f 80 ee 36 00 00 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 f0 3f 01 00 00 00 00 00 00 00 40 00 5c 26 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    );
}

#[test]
fn at_risk_region_and_rebalance_list_bodies() {
    use omnistock::protocol::ops::opcode::{AT_RISK_REGION, REBALANCE_LIST};
    assert_eq!((REBALANCE_LIST, AT_RISK_REGION), (0x0409, 0x040A));
    // Both read every SKU: adapters and admins, not checkout services.
    for op in [AT_RISK_REGION, REBALANCE_LIST] {
        assert!(Role::Adapter.may(op) && Role::Admin.may(op));
        assert!(!Role::Checkout.may(op));
    }
    let op = Op::AtRiskRegion(AtRiskRegionQuery {
        region: "FR".into(),
        window: 1,
        limit: 10,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, AT_RISK_REGION);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "at risk region body",
        &raw.body,
        "02 00 00 00 00 00 00 00 46 52 01 0a 00 00 00",
    );
    let op = Op::RebalanceList(RebalanceQuery {
        sku: None,
        region: Some("FR".into()),
        limit: 10,
        near_hours: None,
        surplus_hours: Some(240),
        window: None,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, REBALANCE_LIST);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "rebalance list body",
        &raw.body,
        "00 01 02 00 00 00 00 00 00 00 46 52 0a 00 00 00 00 01 f0 00 00 00 00",
    );
    // The region FR of the velocity example (ATP 4, the same three windows).
    let w = |half_life_ms, held_per_hour, fulfilled_per_hour, hours_to_zero| WireWindowRate {
        half_life_ms,
        held_per_hour,
        fulfilled_per_hour,
        hours_to_zero,
    };
    let list = WireAtRiskRegion {
        region: "FR".into(),
        window: 1,
        skus: vec![WireAtRiskRegionSku {
            sku: "A".into(),
            velocity: WireRegionVelocity {
                region: "FR".into(),
                atp: 4,
                windows: vec![
                    w(900_000, 8.0, 0.0, Some(0.5)),
                    w(3_600_000, 2.0, 1.0, Some(2.0)),
                    w(86_400_000, 0.0, 0.0, None),
                ],
            },
        }],
    };
    golden(
        "at risk region result",
        &encode_payload(&list).unwrap(),
        "02 00 00 00 00 00 00 00 46 52 01 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 02 00 00 00 00 00 00 00 46 52 04 00 00 00 03 00 00 00 00 00 00 00 a0 bb 0d 00 00 00 00 00 00 00 00 00 00 00 20 40 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 e0 3f 80 ee 36 00 00 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 f0 3f 01 00 00 00 00 00 00 00 40 00 5c 26 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    );
    let rec = WireRecommendation {
        id: 0x2a,
        sku: "A".into(),
        basis_seq: 9,
        short_region: "FR".into(),
        donor_region: "DE".into(),
        from: "de".into(),
        to: "fr".into(),
        qty: 6,
        short_cover_hours: 2.0,
        short_cover_after_hours: 8.0,
        donor_cover_hours: None,
        donor_cover_after_hours: None,
        reference: format!("rebalance:{:032x}", 0x2a),
    };
    let answer = WireRebalance {
        near_hours: 72,
        surplus_hours: 336,
        window: 1,
        recommendations: vec![rec],
        truncated: false,
    };
    golden(
        "rebalance list result",
        &encode_payload(&answer).unwrap(),
        "48 00 00 00 50 01 00 00 01 01 00 00 00 00 00 00 00 2a 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 41 09 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 46 52 02 00 00 00 00 00 00 00 44 45 02 00 00 00 00 00 00 00 64 65 02 00 00 00 00 00 00 00 66 72 06 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00 20 40 00 00 2a 00 00 00 00 00 00 00 72 65 62 61 6c 61 6e 63 65 3a 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 32 61 00",
    );
}

#[test]
fn list_skus_bodies() {
    use omnistock::protocol::ops::opcode::LIST_SKUS;
    assert_eq!(LIST_SKUS, 0x0407);
    for role in [Role::Checkout, Role::Adapter, Role::Admin] {
        assert!(role.may(LIST_SKUS), "{role:?} may list SKU ids");
    }
    let op = Op::ListSkus(ListSkus {
        prefix: "A".into(),
        after: Some("B".into()),
        limit: 2,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, LIST_SKUS);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "list skus body",
        &raw.body,
        "01 00 00 00 00 00 00 00 41 01 01 00 00 00 00 00 00 00 42 02 00 00 00",
    );
    let page = WireSkuList {
        skus: vec!["A1".into(), "A2".into()],
        next_after: Some("A2".into()),
    };
    golden(
        "list skus result",
        &encode_payload(&page).unwrap(),
        "02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 41 31 02 00 00 00 00 00 00 00 41 32 01 02 00 00 00 00 00 00 00 41 32",
    );
}

#[test]
fn list_reservations_bodies() {
    use omnistock::protocol::ops::opcode::LIST_RESERVATIONS;
    assert_eq!(LIST_RESERVATIONS, 0x0408);
    for role in [Role::Checkout, Role::Adapter, Role::Admin] {
        assert!(
            role.may(LIST_RESERVATIONS),
            "{role:?} may list a SKU's reservations"
        );
    }
    let op = Op::ListReservations(ListReservations {
        sku: "A".into(),
        after: Some(5),
        limit: 2,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, LIST_RESERVATIONS);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "list reservations body",
        &raw.body,
        "01 00 00 00 00 00 00 00 41 01 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00",
    );
    let hold = WireSkuHold {
        reservation: 5,
        channel: "web".into(),
        expires_at_ms: 1000,
        allocations: vec![("wh".into(), 2)],
    };
    // The server's page bound counts a hold as 40 + channel + (12 + location) a line:
    // its encoding exactly.
    assert_eq!(encode_payload(&hold).unwrap().len(), 40 + 3 + (12 + 2));
    let page = WireSkuReservations {
        sku: "A".into(),
        reservations: vec![hold],
        next_after: None,
    };
    golden("list reservations result", &encode_payload(&page).unwrap(), "01 00 00 00 00 00 00 00 41 01 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 e8 03 00 00 00 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 77 68 02 00 00 00 00");
}

#[test]
fn backup_bodies() {
    use omnistock::protocol::ops::opcode::BACKUP;
    assert_eq!(BACKUP, 0x0701);
    assert!(Role::Admin.may(BACKUP));
    for role in [Role::Checkout, Role::Adapter] {
        assert!(!role.may(BACKUP), "{role:?} may not back up");
    }
    let op = Op::Backup(Backup { to: "/b".into() });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, BACKUP);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden("backup body", &raw.body, "02 00 00 00 00 00 00 00 2f 62");
    let answer = WireBackup {
        as_of_seq: 9,
        checkpoint_start_seq: 5,
        skus: 2,
        bytes: 4096,
        log_records: 5,
        duration_ms: 12,
        dir: "/b".into(),
    };
    golden(
        "backup result",
        &encode_payload(&answer).unwrap(),
        "09 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 05 00 00 00 00 00 00 00 0c 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 2f 62",
    );
    assert_eq!(omnistock::protocol::status::name(21), "backup_refused");
    assert_eq!(omnistock::protocol::status::name(22), "backup_failed");
}

#[test]
fn sku_history_bodies() {
    use omnistock::protocol::ops::opcode::SKU_HISTORY;
    assert_eq!(SKU_HISTORY, 0x0601);
    let op = Op::SkuHistory(SkuHistory {
        sku: "A".into(),
        from_seq: 5,
        from_index: 1,
        limit: 2,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, SKU_HISTORY);
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    golden(
        "sku history body",
        &raw.body,
        "01 00 00 00 00 00 00 00 41 05 00 00 00 00 00 00 00 01 00 02 00 00 00",
    );
    let adjusted = WireHistoryEvent {
        seq: 7,
        index: 0,
        at_ms: 1000,
        request_id: 9,
        kind: history_kind::STOCK_ADJUSTED,
        quantity: -2,
        previous: None,
        location: "wh".into(),
        to_location: String::new(),
        channel: String::new(),
        reservation: None,
        allocations: vec![],
        reason: "damage".into(),
        reference: "r1".into(),
        expires_at_ms: 0,
    };
    let held = WireHistoryEvent {
        seq: 8,
        kind: history_kind::HOLD_PLACED,
        quantity: 2,
        location: String::new(),
        channel: "web".into(),
        reservation: Some(5),
        allocations: vec![("wh".into(), 2)],
        reason: String::new(),
        reference: String::new(),
        expires_at_ms: 61_000,
        previous: Some(3),
        ..adjusted.clone()
    };
    // The server's page bound counts each event with encoded_len: its encoding exactly.
    for e in [&adjusted, &held] {
        assert_eq!(encode_payload(e).unwrap().len(), e.encoded_len(), "{e:?}");
    }
    let page = WireSkuHistory {
        sku: "A".into(),
        base_seq: 1,
        events: vec![adjusted],
        next: Some((8, 0)),
    };
    golden("sku history result", &encode_payload(&page).unwrap(), "01 00 00 00 00 00 00 00 41 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 00 00 e8 03 00 00 00 00 00 00 09 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 05 fe ff ff ff ff ff ff ff 00 02 00 00 00 00 00 00 00 77 68 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 06 00 00 00 00 00 00 00 64 61 6d 61 67 65 02 00 00 00 00 00 00 00 72 31 00 00 00 00 00 00 00 00 01 08 00 00 00 00 00 00 00 00 00");
}

#[test]
fn set_stockout_threshold_body_and_the_stockout_item() {
    let op = Op::SetStockoutThreshold(SetStockoutThreshold {
        request_id: 1,
        channel: "web".into(),
        hours: 24,
    });
    let raw = op.to_raw().unwrap();
    assert_eq!(raw.opcode, 0x0308);
    assert_eq!(op.request_id(), Some(1));
    golden(
        "set stockout threshold body",
        &raw.body,
        "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 77 65 62 18 00 00 00",
    );
    assert_eq!(Op::from_raw(&raw).unwrap(), Some(op));
    let item = PushItem::Stockout(WireStockout {
        seq: 42,
        at_ms: AT_MS,
        sku: "A".into(),
        channel: "web".into(),
        projected: true,
        threshold_hours: 24,
        hours_milli: 12_985,
        per_hour_milli: 6_931,
        atp: 90,
        reason: stockout_reason::NONE,
        window: 1,
    });
    let bytes = encode_payload(&item).unwrap();
    golden(
        "stockout item",
        &bytes,
        "08 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 03 00 00 00 00 00 00 00 77 65 62 01 18 00 00 00 b9 32 00 00 00 00 00 00 13 1b 00 00 00 00 00 00 5a 00 00 00 00 01",
    );
    assert_eq!(decode_payload::<PushItem>(&bytes).unwrap(), item);
    assert_eq!(kinds::STOCKOUT, 8);
    assert_eq!(kinds::ALL, 63);
}

#[test]
fn rebalance_and_region_stockout_items_are_stable() {
    let item = PushItem::Rebalance(WireRebalanceEvent {
        seq: 42,
        at_ms: AT_MS,
        sku: "A".into(),
        id: 7,
        recommended: true,
        reason: rebalance_reason::NONE,
        short_region: "FR".into(),
        donor_region: "DE".into(),
        from: "d".into(),
        to: "f".into(),
        qty: 9,
        short_cover_milli: 1_000,
        donor_cover_milli: u64::MAX,
        reference: "rebalance:7".into(),
    });
    let bytes = encode_payload(&item).unwrap();
    golden("rebalance item", &bytes, "09 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 07 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 02 00 00 00 00 00 00 00 46 52 02 00 00 00 00 00 00 00 44 45 01 00 00 00 00 00 00 00 64 01 00 00 00 00 00 00 00 66 09 00 00 00 e8 03 00 00 00 00 00 00 ff ff ff ff ff ff ff ff 0b 00 00 00 00 00 00 00 72 65 62 61 6c 61 6e 63 65 3a 37");
    assert_eq!(decode_payload::<PushItem>(&bytes).unwrap(), item);
    let item = PushItem::RegionStockout(WireRegionStockout {
        seq: 42,
        at_ms: AT_MS,
        sku: "A".into(),
        region: "FR".into(),
        projected: false,
        threshold_hours: 24,
        hours_milli: 40_000,
        per_hour_milli: 2_000,
        atp: 80,
        reason: stockout_reason::RECOVERED,
        window: 1,
    });
    let bytes = encode_payload(&item).unwrap();
    golden("region stockout item", &bytes, "0a 00 00 00 2a 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 01 00 00 00 00 00 00 00 41 02 00 00 00 00 00 00 00 46 52 00 18 00 00 00 40 9c 00 00 00 00 00 00 d0 07 00 00 00 00 00 00 50 00 00 00 01 01");
    assert_eq!(decode_payload::<PushItem>(&bytes).unwrap(), item);
    assert_eq!(
        [
            rebalance_reason::NONE,
            rebalance_reason::APPLIED,
            rebalance_reason::RESOLVED
        ],
        [0, 1, 2]
    );
}
