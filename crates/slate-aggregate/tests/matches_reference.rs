//! The kernel against the brute-force reference on seeded random data: small key and time
//! ranges force equal timestamps, empty histories, queries before any event, out-of-order input
//! and null values; int values reach the extremes of i64, float values include NaN, infinities,
//! signed zeros and magnitudes far apart, and every result is compared bit for bit.

use proptest::prelude::*;
use slate_aggregate::{Agg, Events, Output, Query, Values, kernel, reference};

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

/// Results with floats as bits, so that NaN equals NaN and -0.0 differs from 0.0.
#[derive(Debug, PartialEq)]
enum Bits {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<u64>>),
}

fn bits(o: &Output) -> Bits {
    match o {
        Output::Int(v) => Bits::Int(v.clone()),
        Output::Float(v) => Bits::Float(v.iter().map(|x| x.map(f64::to_bits)).collect()),
    }
}

fn float_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => (-4i64..5).prop_map(|v| v as f64 * 0.5),
        2 => (-3i64..4).prop_map(|v| v as f64 * 0.1),
        1 => prop::sample::select(vec![1e300, -1e300, 1e-300, 1e16, -0.0, 0.0]),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    ]
}

fn int_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -4i64..5,
        1 => prop::sample::select(vec![i64::MAX, i64::MIN, i64::MAX - 1, 1 << 53, (1 << 53) + 1]),
    ]
}

fn rows<T: std::fmt::Debug + Clone>(
    value: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<(i64, i64, Option<T>)>> {
    prop::collection::vec(
        (0i64..6, 0i64..40, prop::option::weighted(0.85, value)),
        0..120,
    )
}

fn events<T: Clone>(
    rows: &[(i64, i64, Option<T>)],
    values: impl Fn(Vec<Option<T>>) -> Values,
) -> Events {
    Events {
        entity: rows.iter().map(|r| r.0).collect(),
        ts: rows.iter().map(|r| r.1 * 1_000_000).collect(),
        value: values(rows.iter().map(|r| r.2.clone()).collect()),
    }
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

fn check(ev: &Events, qs: &[Query], window: Option<i64>) -> Result<(), TestCaseError> {
    // Sorted once without values, then given the values: the engine's path.
    let bare = Events {
        value: Values::absent(),
        ..ev.clone()
    };
    let sorted = kernel::Prepared::new(&bare);
    let prepared = sorted.with_values(&ev.value);
    let order = kernel::QueryOrder::new(qs);
    for agg in AGGS {
        // Without values: the aggregations that read none answer as with them; the others
        // are refused when there are events to read.
        let bare_result = sorted.aggregate_ordered(qs, &order, agg, window);
        if matches!(agg, Agg::Count | Agg::TimeSinceLatest) {
            let with = prepared.aggregate_ordered(qs, &order, agg, window);
            prop_assert_eq!(
                bare_result.map(|o| bits(&o)).ok(),
                with.map(|o| bits(&o)).ok(),
                "{:?} without values",
                agg
            );
        } else if !ev.ts.is_empty() && !qs.is_empty() {
            prop_assert!(
                matches!(bare_result, Err(slate_aggregate::AggError::NoValues { .. })),
                "{agg:?} without values: {bare_result:?}"
            );
        }
        let fast = prepared.aggregate_ordered(qs, &order, agg, window);
        let slow = reference::aggregate(ev, qs, agg, window);
        match (fast, slow) {
            (Ok(f), Ok(s)) => prop_assert_eq!(bits(&f), bits(&s), "{:?} window {:?}", agg, window),
            (Err(_), Err(_)) => {}
            (f, s) => prop_assert!(false, "{agg:?}: kernel {f:?}, reference {s:?}"),
        }
        // Several windows in one pass: each result equals its window's reference.
        let windows = [window, window.map(|w| w * 3), None, Some(1_000_000)];
        match prepared.aggregate_windows(qs, &order, agg, &windows) {
            Ok(outs) => {
                prop_assert_eq!(outs.len(), windows.len());
                for (out, w) in outs.iter().zip(windows) {
                    let slow = reference::aggregate(ev, qs, agg, w);
                    prop_assert!(
                        slow.is_ok(),
                        "{:?} window {:?}: kernel ok, reference {:?}",
                        agg,
                        w,
                        slow
                    );
                    if let Ok(s) = slow {
                        prop_assert_eq!(bits(out), bits(&s), "{:?} windows, window {:?}", agg, w);
                    }
                }
            }
            // Some window overflows: the reference agrees for at least one of them.
            Err(_) => prop_assert!(
                windows
                    .iter()
                    .any(|&w| reference::aggregate(ev, qs, agg, w).is_err()),
                "{agg:?}: kernel overflowed over several windows, the reference did not"
            ),
        }
    }
    Ok(())
}

/// The same rows with entities far apart (not dictionary codes): the kernel's sparse path.
fn spread(mut ev: Events) -> Events {
    for e in &mut ev.entity {
        *e = e.wrapping_mul(1 << 40).wrapping_sub(7);
    }
    ev
}

fn spread_queries(qs: &[Query]) -> Vec<Query> {
    qs.iter()
        .map(|q| Query {
            entity: q.entity.wrapping_mul(1 << 40).wrapping_sub(7),
            now: q.now,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn kernel_equals_reference_on_floats(r in rows(float_value()), qs in queries(), w in prop::option::of(1i64..20)) {
        check(&events(&r, Values::Float), &qs, w.map(|s| s * 1_000_000))?;
    }

    #[test]
    fn kernel_equals_reference_on_ints(r in rows(int_value()), qs in queries(), w in prop::option::of(1i64..20)) {
        check(&events(&r, Values::Int), &qs, w.map(|s| s * 1_000_000))?;
    }

    #[test]
    fn kernel_equals_reference_on_codes_and_sparse_entities(
        r in rows(0i64..12), qs in queries(), w in prop::option::of(1i64..20),
    ) {
        // Small non-negative values: `count_distinct` counts them in a table indexed by value.
        let ev = events(&r, Values::Int);
        check(&ev, &qs, w.map(|s| s * 1_000_000))?;
        check(&spread(ev), &spread_queries(&qs), w.map(|s| s * 1_000_000))?;
    }
}

#[test]
fn window_excludes_now_and_equal_timestamps() {
    let s = 1_000_000;
    let ev = Events {
        entity: vec![1, 1, 1, 1],
        ts: vec![0, 5 * s, 10 * s, 10 * s],
        value: Values::Float(vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0)]),
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
    let agg = |agg, window, q: &[Query]| kernel::aggregate(&ev, q, agg, window).unwrap();
    // now - 10s <= ts < now: the events at 0 and 5s, not the ones at 10s.
    assert_eq!(
        agg(Agg::Count, Some(10 * s), &q),
        Output::Int(vec![Some(2), Some(0)])
    );
    assert_eq!(
        agg(Agg::Count, Some(5 * s), &q),
        Output::Int(vec![Some(1), Some(0)])
    );
    assert_eq!(
        agg(Agg::TimeSinceLatest, None, &q),
        Output::Float(vec![Some(5.0), None])
    );
    assert_eq!(
        agg(Agg::Sum, Some(10 * s), &q),
        Output::Float(vec![Some(3.0), None])
    );
    let later = [Query {
        entity: 1,
        now: 11 * s,
    }];
    assert_eq!(
        agg(Agg::Latest, None, &later),
        Output::Float(vec![Some(4.0)])
    );
}

#[test]
fn an_int_sum_beyond_i64_is_an_error_not_a_wrapped_value() {
    let ev = Events {
        entity: vec![1, 1],
        ts: vec![0, 1],
        value: Values::Int(vec![Some(i64::MAX), Some(1)]),
    };
    let q = [Query { entity: 1, now: 2 }];
    assert!(kernel::aggregate(&ev, &q, Agg::Sum, None).is_err());
    assert_eq!(
        kernel::aggregate(&ev, &q, Agg::Max, None).unwrap(),
        Output::Int(vec![Some(i64::MAX)])
    );
    assert_eq!(
        kernel::aggregate(&ev, &q, Agg::Mean, None).unwrap(),
        Output::Float(vec![Some(i64::MAX as f64 / 2.0)])
    );
}
