//! The kernel against the brute-force reference on seeded random data: small key and time
//! ranges force equal timestamps, empty histories, queries before any event, out-of-order input
//! and null values.

use proptest::prelude::*;
use slate_aggregate::{Agg, Events, Query, kernel, reference};

const AGGS: [Agg; 8] = [
    Agg::Count,
    Agg::CountDistinct,
    Agg::Sum,
    Agg::Mean,
    Agg::Min,
    Agg::Max,
    Agg::Latest,
    Agg::TimeSinceLatest,
];

fn events() -> impl Strategy<Value = Events> {
    prop::collection::vec(
        (0i64..6, 0i64..40, prop::option::weighted(0.9, 0i64..5)),
        0..120,
    )
    .prop_map(|rows| Events {
        entity: rows.iter().map(|r| r.0).collect(),
        ts: rows.iter().map(|r| r.1 * 1_000_000).collect(),
        value: rows.iter().map(|r| r.2.map(|v| v as f64 * 0.5)).collect(),
    })
}

fn queries() -> impl Strategy<Value = Vec<Query>> {
    prop::collection::vec((0i64..8, 0i64..45), 0..60).prop_map(|qs| {
        qs.into_iter()
            .map(|(e, t)| Query {
                entity: e,
                now: t * 1_000_000,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn kernel_equals_reference(ev in events(), qs in queries(), w in prop::option::of(1i64..20)) {
        let window = w.map(|s| s * 1_000_000);
        // Sorted once without values, then given the values: the engine's path.
        let bare = Events { value: vec![None; ev.ts.len()], ..ev.clone() };
        let prepared = kernel::Prepared::new(&bare).with_values(&ev.value);
        let order = kernel::QueryOrder::new(&qs);
        for agg in AGGS {
            let fast = prepared.aggregate_ordered(&qs, &order, agg, window);
            let slow = reference::aggregate(&ev, &qs, agg, window);
            prop_assert_eq!(fast, slow, "{:?} window {:?}", agg, window);
        }
    }
}

#[test]
fn window_excludes_now_and_equal_timestamps() {
    let s = 1_000_000;
    let ev = Events {
        entity: vec![1, 1, 1, 1],
        ts: vec![0, 5 * s, 10 * s, 10 * s],
        value: vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
    };
    let q = [
        Query {
            entity: 1,
            now: 10 * s,
        },
        Query {
            entity: 2,
            now: 10 * s,
        },
    ];
    // now - 10s <= ts < now: the events at 0 and 5s, not the ones at 10s.
    assert_eq!(
        kernel::aggregate(&ev, &q, Agg::Count, Some(10 * s)),
        vec![Some(2.0), Some(0.0)]
    );
    assert_eq!(
        kernel::aggregate(&ev, &q, Agg::Count, Some(5 * s)),
        vec![Some(1.0), Some(0.0)]
    );
    assert_eq!(
        kernel::aggregate(&ev, &q, Agg::TimeSinceLatest, None),
        vec![Some(5.0), None]
    );
    assert_eq!(
        kernel::aggregate(
            &ev,
            &[Query {
                entity: 1,
                now: 11 * s
            }],
            Agg::Latest,
            None
        ),
        vec![Some(4.0)]
    );
}
