//! Store behaviour, identical on SQLite and (when configured) PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::DateTime;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::CqrsFramework;
use subledger_domain::customer::{Customer, CustomerCommand};
use subledger_store::projection::ViewRow;
use subledger_store::scratch::ScratchDatabase;
use subledger_store::{Checkpoint, Database, EventMetadata, InboxStatus, NewInboxEvent, Origin};

fn inbox_event(id: &str, created: i64, received: i64) -> NewInboxEvent {
    NewInboxEvent {
        event_id: id.to_owned(),
        event_type: "customer.created".to_owned(),
        api_version: Some("2025-03-31.basil".to_owned()),
        livemode: false,
        account: None,
        ordering_key: Some(format!("cus_{id}")),
        stripe_created: created,
        payload: format!(r#"{{"id":"{id}"}}"#),
        received_at_ms: received,
        correlation_id: format!("corr-{id}"),
    }
}

fn keyed(id: &str, created: i64, customer: &str) -> NewInboxEvent {
    NewInboxEvent {
        ordering_key: Some(customer.to_owned()),
        ..inbox_event(id, created, 1)
    }
}

#[tokio::test]
async fn one_customers_events_go_to_one_worker_at_a_time_in_stripe_order() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        db.insert_inbox_events(&[
            keyed("evt_a1", 1, "cus_a"),
            keyed("evt_b1", 2, "cus_b"),
            keyed("evt_a2", 3, "cus_a"),
            keyed("evt_a3", 4, "cus_a"),
        ])
        .await
        .unwrap();
        let ids = |claimed: Vec<subledger_store::ClaimedEvent>| -> Vec<String> {
            claimed.into_iter().map(|c| c.event_id).collect()
        };
        // The first worker takes cus_a's oldest; the second may not take cus_a's next while
        // that lease is held, only another customer's.
        let first = db.claim_inbox_events(1_000, 60_000, 1).await.unwrap();
        assert_eq!(ids(first), ["evt_a1"], "{}", test.name);
        let second = db.claim_inbox_events(1_000, 60_000, 10).await.unwrap();
        assert_eq!(ids(second), ["evt_b1"], "{}", test.name);
        // One claim may take several of one customer's rows: its worker runs them in order.
        db.finish_inbox_event("evt_a1", InboxStatus::Processed, "applied", 2_000)
            .await
            .unwrap();
        let next = db.claim_inbox_events(2_000, 60_000, 10).await.unwrap();
        assert_eq!(ids(next), ["evt_a2", "evt_a3"], "{}", test.name);
        // A row waiting out its backoff holds no lease: the customer's others go on.
        db.retry_inbox_event_later("evt_a2", "invoice not known yet", 100_000)
            .await
            .unwrap();
        db.finish_inbox_event("evt_a3", InboxStatus::Processed, "applied", 3_000)
            .await
            .unwrap();
        db.insert_inbox_events(&[keyed("evt_a4", 5, "cus_a")])
            .await
            .unwrap();
        let meanwhile = db.claim_inbox_events(3_000, 60_000, 10).await.unwrap();
        assert_eq!(ids(meanwhile), ["evt_a4"], "{}", test.name);
        test.cleanup().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_split_one_customer_between_workers() {
    for test in ScratchDatabase::all().await.unwrap() {
        let mut rows = Vec::new();
        for change in 0..6 {
            for customer in 0..5 {
                rows.push(keyed(
                    &format!("evt_{customer}_{change}"),
                    change,
                    &format!("cus_{customer}"),
                ));
            }
        }
        test.database.insert_inbox_events(&rows).await.unwrap();
        // Eight workers claim at once; none finishes, so every lease is still held at the end.
        let claims: Vec<_> = (0..8)
            .map(|_| {
                let db = test.database.clone();
                tokio::spawn(async move { db.claim_inbox_events(1_000, 60_000, 4).await })
            })
            .collect();
        let mut owner = std::collections::HashMap::new();
        for (worker, claim) in claims.into_iter().enumerate() {
            for row in claim.await.unwrap().unwrap() {
                let customer = row.event_id.split('_').nth(1).unwrap().to_owned();
                let first = *owner.entry(customer.clone()).or_insert(worker);
                assert_eq!(
                    first, worker,
                    "{}: cus_{customer} claimed by two workers",
                    test.name
                );
            }
        }
        assert_eq!(
            owner.len(),
            5,
            "{}: every customer is being worked on",
            test.name
        );
        test.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn the_inbox_stores_each_event_id_once() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let batch = [
            inbox_event("evt_a", 10, 1),
            inbox_event("evt_b", 11, 1),
            inbox_event("evt_a", 10, 2),
        ];
        assert_eq!(
            db.insert_inbox_events(&batch).await.unwrap(),
            [true, true, false],
            "{}",
            test.name
        );
        assert_eq!(
            db.insert_inbox_events(&[inbox_event("evt_b", 11, 3), inbox_event("evt_c", 9, 3)])
                .await
                .unwrap(),
            [false, true],
            "{}",
            test.name
        );
        let stats = db.inbox_stats().await.unwrap();
        assert_eq!(stats.pending, 3, "{}", test.name);
        test.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn workers_claim_due_rows_oldest_first_and_leases_keep_others_off() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        db.insert_inbox_events(&[
            inbox_event("evt_late", 20, 1),
            inbox_event("evt_early", 10, 2),
            inbox_event("evt_mid", 15, 3),
        ])
        .await
        .unwrap();
        let claimed = db.claim_inbox_events(1_000, 60_000, 2).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_early", "evt_mid"], "{}", test.name);
        assert_eq!(claimed[0].attempts, 1);
        assert_eq!(claimed[0].correlation_id, "corr-evt_early");

        // The leased rows are not handed out again; the third one is.
        let next = db.claim_inbox_events(2_000, 60_000, 10).await.unwrap();
        assert_eq!(next.len(), 1, "{}", test.name);
        assert_eq!(next[0].event_id, "evt_late");

        db.finish_inbox_event("evt_early", InboxStatus::Processed, "applied", 3_000)
            .await
            .unwrap();
        db.retry_inbox_event_later("evt_mid", "boom", 100_000)
            .await
            .unwrap();
        // After the lease ran out, an unfinished row comes back: a crashed worker loses nothing.
        let after_lease = db.claim_inbox_events(70_000, 60_000, 10).await.unwrap();
        let ids: Vec<_> = after_lease.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["evt_late"], "{}", test.name);
        assert_eq!(after_lease[0].attempts, 2);
        // The failed one waits for its retry time.
        let retried = db.claim_inbox_events(100_000, 60_000, 10).await.unwrap();
        assert_eq!(retried.len(), 1, "{}", test.name);
        assert_eq!(retried[0].event_id, "evt_mid");

        let stats = db.inbox_stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.processed, stats.failing),
            (2, 1, 1),
            "{}",
            test.name
        );
        test.cleanup().await.unwrap();
    }
}

fn metadata(event_id: &str) -> EventMetadata {
    EventMetadata {
        received_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        correlation_id: "corr-1".to_owned(),
        origin: Origin::Webhook {
            event_id: event_id.to_owned(),
            event_type: Some("customer.updated".to_owned()),
            created: 1_700_000_000,
            fetched: false,
        },
        order_id: None,
    }
}

async fn record_details(db: &Database, customer: &str, event_id: &str, second: i64) {
    let command = CustomerCommand::RecordDetails {
        metadata: BTreeMap::from([("n".to_owned(), second.to_string())]),
        email: None,
        occurred_at: DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap(),
        provenance: Default::default(),
    };
    match db {
        Database::Sqlite(pool) => {
            let store = PersistedEventStore::<_, Customer>::new_event_store(
                Database::sqlite_repository(pool),
            );
            CqrsFramework::new(store, vec![], ())
                .execute_with_metadata(customer, command, metadata(event_id).to_map())
                .await
                .unwrap();
        }
        Database::Postgres(pool) => {
            let store = PersistedEventStore::<_, Customer>::new_event_store(
                Database::postgres_repository(pool),
            );
            CqrsFramework::new(store, vec![], ())
                .execute_with_metadata(customer, command, metadata(event_id).to_map())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn the_event_log_is_read_in_order_with_metadata() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        record_details(db, "cus_1", "evt_1", 1).await;
        record_details(db, "cus_2", "evt_2", 2).await;
        record_details(db, "cus_1", "evt_3", 3).await;

        // Visibility waits for older transactions anywhere in the cluster: poll.
        let events = read_until(db, Checkpoint::default(), 3).await;
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.aggregate_id.as_str(), e.sequence))
            .collect();
        assert_eq!(
            seen,
            [("cus_1", 1), ("cus_2", 1), ("cus_1", 2)],
            "{}",
            test.name
        );
        assert!(
            events.windows(2).all(|w| w[0].checkpoint < w[1].checkpoint),
            "{}",
            test.name
        );
        assert!(matches!(
            events[1].metadata().unwrap().origin,
            Origin::Webhook { ref event_id, .. } if event_id == "evt_2"
        ));
        assert_eq!(events[0].event_type, "DetailsRecorded");

        let rest = db
            .read_events_after(events[0].checkpoint, 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 2, "{}", test.name);
        assert!(db
            .read_events_after(events[2].checkpoint, 10)
            .await
            .unwrap()
            .is_empty());
        // The log's end is the last event a projector reads: an operator's command waits
        // for its answer until the projector has applied it.
        assert_eq!(
            db.log_end().await.unwrap(),
            events[2].checkpoint,
            "{}",
            test.name
        );
        test.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn metadata_is_queryable_as_columns() {
    for test in ScratchDatabase::all().await.unwrap() {
        record_details(&test.database, "cus_1", "evt_42", 1).await;
        let row: (String, i64, String) = match &test.database {
            Database::Sqlite(pool) => {
                sqlx::query_as("SELECT stripe_event_id, stripe_created, correlation_id FROM events")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Database::Postgres(pool) => {
                sqlx::query_as("SELECT stripe_event_id, stripe_created, correlation_id FROM events")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            row,
            ("evt_42".to_owned(), 1_700_000_000, "corr-1".to_owned()),
            "{}",
            test.name
        );
        test.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn a_projection_saves_only_from_the_checkpoint_it_read() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let saved = db.load_billing_views().await.unwrap();
        let start = saved.checkpoint;
        assert_eq!(start, Checkpoint::default());
        assert!(saved.rows.is_empty());
        assert_eq!((saved.version, saved.generation), (1, 0));
        let to = Checkpoint { tx: 0, position: 5 };
        let row = |json: &str| ViewRow {
            key: "cus_1".to_owned(),
            json: json.to_owned(),
        };
        assert!(db
            .save_billing_views(start, to, 0, &[row("{\"v\":1}")])
            .await
            .unwrap());
        // A second saver that read the old checkpoint saves nothing.
        assert!(!db
            .save_billing_views(
                start,
                Checkpoint { tx: 0, position: 6 },
                0,
                &[row("{\"v\":2}")]
            )
            .await
            .unwrap());
        let saved = db.load_billing_views().await.unwrap();
        assert_eq!(saved.checkpoint, to, "{}", test.name);
        assert_eq!(saved.rows, [row("{\"v\":1}")], "{}", test.name);
        // A rebuild replaces every view at once, in its own shape, and moves the generation.
        let rebuilt = Checkpoint { tx: 0, position: 7 };
        let other = ViewRow {
            key: "cus_2".to_owned(),
            json: "{\"v\":3}".to_owned(),
        };
        let generation = db
            .replace_billing_views(rebuilt, std::slice::from_ref(&other), 2)
            .await
            .unwrap();
        assert_eq!(generation, 1);
        let saved = db.load_billing_views().await.unwrap();
        assert_eq!(
            (
                saved.checkpoint,
                saved.version,
                saved.generation,
                saved.rows
            ),
            (rebuilt, 2, 1, vec![other]),
            "{}",
            test.name
        );
        assert_eq!(db.billing_views_state().await.unwrap(), (rebuilt, 1));
        // A projector that loaded the views before the rebuild saves nothing over it, even
        // from the rebuild's own checkpoint.
        assert!(!db
            .save_billing_views(
                rebuilt,
                Checkpoint { tx: 0, position: 8 },
                0,
                &[row("{\"v\":4}")]
            )
            .await
            .unwrap());
        assert!(db
            .save_billing_views(
                rebuilt,
                Checkpoint { tx: 0, position: 8 },
                1,
                &[row("{\"v\":4}")]
            )
            .await
            .unwrap());
        test.cleanup().await.unwrap();
    }
}

/// On PostgreSQL a sequence value is not commit order. An event whose transaction commits after
/// a later position became visible must not be skipped, and a rolled-back one must not stall.
#[tokio::test]
async fn postgres_projectors_neither_skip_late_commits_nor_stall_on_rollbacks() {
    let Some(test) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let Database::Postgres(pool) = &test.database else {
        unreachable!()
    };
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('Customer', $1, 1, 'DetailsRecorded', '1', '{}', '{}')";

    let mut slow = pool.begin().await.unwrap();
    sqlx::query(insert)
        .bind("cus_slow")
        .execute(&mut *slow)
        .await
        .unwrap();
    sqlx::query(insert)
        .bind("cus_fast")
        .execute(pool)
        .await
        .unwrap();
    // The slow transaction holds the lower position and has not committed: nothing is readable
    // yet, not even the committed later position (reading it would skip the slow one).
    assert!(test
        .database
        .read_events_after(Checkpoint::default(), 10)
        .await
        .unwrap()
        .is_empty());
    slow.commit().await.unwrap();
    // Visibility waits for every older transaction in the cluster (other tests run their own),
    // so poll; what matters is the order, and that the slow event is not skipped.
    let events = read_until(&test.database, Checkpoint::default(), 2).await;
    let ids: Vec<_> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["cus_slow", "cus_fast"]);

    let mut doomed = pool.begin().await.unwrap();
    sqlx::query(insert)
        .bind("cus_doomed")
        .execute(&mut *doomed)
        .await
        .unwrap();
    doomed.rollback().await.unwrap();
    sqlx::query(insert)
        .bind("cus_after")
        .execute(pool)
        .await
        .unwrap();
    let after = read_until(&test.database, events[1].checkpoint, 1).await;
    let ids: Vec<_> = after.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["cus_after"]);
    test.cleanup().await.unwrap();
}

/// Reads from `after` until at least `count` events are visible (or ten seconds pass).
async fn read_until(
    db: &Database,
    after: Checkpoint,
    count: usize,
) -> Vec<subledger_store::StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = db.read_events_after(after, 10).await.unwrap();
        if events.len() >= count || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two workers (two command buses, as two processes have) on one customer: each keeps the
/// aggregate in memory, yet each command first reads what the other appended, so a fact the
/// other already recorded is recognised (no duplicate event, no conflict) and the stream
/// never forks.
#[tokio::test]
async fn cached_aggregates_read_what_other_workers_appended() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let upcasters = subledger_domain::schema::upcasters;
        let first = subledger_store::CommandBus::<Customer>::new(db, upcasters);
        let second = subledger_store::CommandBus::<Customer>::new(db, upcasters);
        let details = |n: i64| CustomerCommand::RecordDetails {
            metadata: BTreeMap::from([("n".to_owned(), n.to_string())]),
            email: None,
            occurred_at: DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap(),
            provenance: Default::default(),
        };
        first
            .execute("cus_shared", details(1), &metadata("evt_1"))
            .await
            .unwrap();
        second
            .execute("cus_shared", details(2), &metadata("evt_2"))
            .await
            .unwrap();
        // The first bus cached the customer at one event; the second appended another.
        first
            .execute("cus_shared", details(2), &metadata("evt_2_again"))
            .await
            .unwrap();
        first
            .execute("cus_shared", details(3), &metadata("evt_3"))
            .await
            .unwrap();
        let count = match db {
            Database::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM events WHERE aggregate_id = 'cus_shared'",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
            Database::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM events WHERE aggregate_id = 'cus_shared'",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
        };
        assert_eq!(count, 3, "{}", test.name);
        test.cleanup().await.unwrap();
    }
}

/// A counter whose commands say what they expect to find: a state with an event applied twice
/// (or missed) refuses the next command.
mod counter {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    pub struct Counter {
        pub count: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Added;

    impl cqrs_es::DomainEvent for Added {
        fn event_type(&self) -> String {
            "Added".to_owned()
        }
        fn event_version(&self) -> String {
            "1".to_owned()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("expected {expected}, found {found}")]
    pub struct Unexpected {
        pub expected: u32,
        pub found: u32,
    }

    impl cqrs_es::Aggregate for Counter {
        const TYPE: &'static str = "Counter";
        type Command = u32;
        type Event = Added;
        type Error = Unexpected;
        type Services = ();

        async fn handle(
            &mut self,
            expected: u32,
            _: &(),
            sink: &cqrs_es::event_sink::EventSink<Self>,
        ) -> Result<(), Unexpected> {
            if self.count != expected {
                return Err(Unexpected {
                    expected,
                    found: self.count,
                });
            }
            sink.write(Added, self).await;
            Ok(())
        }

        fn apply(&mut self, _: Added) {
            self.count += 1;
        }
    }
}

/// Each event is applied to a cached aggregate exactly once: commands that state the count
/// they expect succeed one after another on one bus, and a second bus sees them all.
#[tokio::test]
async fn cached_aggregates_apply_each_event_once() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let bus = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        for expected in 0..5 {
            bus.execute("counter_1", expected, &metadata("evt_counter"))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", test.name));
        }
        let other = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        other
            .execute("counter_1", 5, &metadata("evt_counter"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", test.name));
        bus.execute("counter_1", 6, &metadata("evt_counter"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", test.name));
        test.cleanup().await.unwrap();
    }
}

/// A unit of work commits its events and finishes its rows together, or (when another writer
/// appended to one of its aggregates first) writes nothing at all.
#[tokio::test]
async fn a_unit_of_work_commits_whole_or_not_at_all() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        db.insert_inbox_events(&[
            keyed("evt_w1", 1, "counter_w"),
            keyed("evt_w2", 2, "counter_w"),
        ])
        .await
        .unwrap();
        let claimed = db.claim_inbox_events(1_000, 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 2, "{}", test.name);
        let bus = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        let other = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        let finished = |id: &str| subledger_store::FinishedRow {
            event_id: id.to_owned(),
            status: InboxStatus::Processed,
            outcome: "applied".to_owned(),
        };

        // Staged on one bus; the other appends to the same counter before the commit.
        let mut work = subledger_store::UnitOfWork::default();
        bus.stage(&mut work, "counter_w", 0, &metadata("evt_counter"))
            .await
            .unwrap();
        bus.stage(&mut work, "counter_w", 1, &metadata("evt_counter"))
            .await
            .unwrap();
        assert_eq!(work.events().len(), 2);
        other
            .execute("counter_w", 0, &metadata("evt_counter"))
            .await
            .unwrap();
        let outcome = db
            .commit_work(work.events(), &[finished("evt_w1")], 2_000)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            subledger_store::WorkCommit::Conflict,
            "{}",
            test.name
        );
        drop(work);
        let stats = db.inbox_stats().await.unwrap();
        assert_eq!(
            stats.processed, 0,
            "{}: the row stays unfinished",
            test.name
        );

        // Staged again from the stream: it commits, events and rows together.
        let mut work = subledger_store::UnitOfWork::default();
        bus.stage(&mut work, "counter_w", 1, &metadata("evt_counter"))
            .await
            .unwrap();
        let outcome = db
            .commit_work(
                work.events(),
                &[finished("evt_w1"), finished("evt_w2")],
                2_000,
            )
            .await
            .unwrap();
        assert_eq!(
            outcome,
            subledger_store::WorkCommit::Committed,
            "{}",
            test.name
        );
        bus.committed(work);
        assert_eq!(
            db.inbox_stats().await.unwrap().processed,
            2,
            "{}",
            test.name
        );
        // The cache holds the committed state: the next command expects 2.
        bus.execute("counter_w", 2, &metadata("evt_counter"))
            .await
            .unwrap();
        test.cleanup().await.unwrap();
    }
}

/// One statement finishes many claimed rows: each gets its own status and outcome, its lease
/// and error are cleared, and a row not in the list is left as it was.
#[tokio::test]
async fn finishing_a_batch_records_each_rows_own_outcome() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let rows: Vec<NewInboxEvent> = (0..1_205)
            .map(|n| inbox_event(&format!("evt_{n}"), 10 + i64::from(n), 1))
            .collect();
        db.insert_inbox_events(&rows).await.unwrap();
        let claimed = db.claim_inbox_events(1_000, 60_000, 2_000).await.unwrap();
        assert_eq!(claimed.len(), 1_205, "{}", test.name);
        db.retry_inbox_event_later("evt_1", "store: down", 0)
            .await
            .unwrap();
        // More rows than one statement takes, all but the last.
        let finished: Vec<subledger_store::FinishedRow> = (0..1_204_u32)
            .map(|n| subledger_store::FinishedRow {
                event_id: format!("evt_{n}"),
                status: if n.is_multiple_of(2) {
                    InboxStatus::Processed
                } else {
                    InboxStatus::Ignored
                },
                outcome: format!("outcome {n}"),
            })
            .collect();
        db.finish_inbox_events(&finished, 5_000).await.unwrap();
        let listed = db
            .list_inbox(&subledger_store::InboxFilter {
                state: None,
                event_type: None,
                since_ms: None,
                limit: 2_000,
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1_205, "{}", test.name);
        for row in listed {
            let n: usize = row.event_id["evt_".len()..].parse().unwrap();
            if n == 1_204 {
                assert_eq!((row.status.as_str(), row.outcome), ("pending", None));
                continue;
            }
            let status = if n.is_multiple_of(2) {
                "processed"
            } else {
                "ignored"
            };
            assert_eq!(
                (row.status.as_str(), row.outcome, row.last_error),
                (status, Some(format!("outcome {n}")), None),
                "{}: {}",
                test.name,
                row.event_id
            );
        }
        let stats = db.inbox_stats().await.unwrap();
        assert_eq!(stats.pending, 1, "{}", test.name);
        test.cleanup().await.unwrap();
    }
}

/// `preload` brings several aggregates into a unit of work with one query: one cached and
/// since appended to by another writer, one only another writer knows, one with no events.
/// Staged commands then see each at its current count, and the unit commits.
#[tokio::test]
async fn preloaded_aggregates_are_current() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        let bus = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        let other = subledger_store::CommandBus::<counter::Counter>::new(db, Vec::new);
        for expected in 0..3 {
            bus.execute("pre_cached", expected, &metadata("evt_counter"))
                .await
                .unwrap();
        }
        for expected in 3..5 {
            other
                .execute("pre_cached", expected, &metadata("evt_counter"))
                .await
                .unwrap();
        }
        for expected in 0..2 {
            other
                .execute("pre_elsewhere", expected, &metadata("evt_counter"))
                .await
                .unwrap();
        }
        let mut work = subledger_store::UnitOfWork::default();
        bus.preload(db, &mut work, &["pre_cached", "pre_elsewhere", "pre_new"])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", test.name));
        for (id, count) in [("pre_cached", 5), ("pre_elsewhere", 2), ("pre_new", 0)] {
            assert!(work.holds(id), "{}: {id} was not preloaded", test.name);
            bus.stage(&mut work, id, count, &metadata("evt_counter"))
                .await
                .unwrap_or_else(|e| panic!("{}: {id} at {count}: {e}", test.name));
        }
        assert_eq!(
            db.commit_work(work.events(), &[], 3_000).await.unwrap(),
            subledger_store::WorkCommit::Committed,
            "{}",
            test.name
        );
        bus.committed(work);
        other
            .execute("pre_cached", 6, &metadata("evt_counter"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", test.name));
        test.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn the_last_reconciliation_is_the_last_recorded_and_only_the_newest_are_kept() {
    for test in ScratchDatabase::all().await.unwrap() {
        let db = &test.database;
        assert_eq!(
            db.last_reconciliation().await.unwrap(),
            None,
            "{}",
            test.name
        );
        let kept = subledger_store::reconciliation::RUNS_KEPT;
        // All in one millisecond, as under a test clock: the order of recording decides.
        for n in 0..kept + 5 {
            db.record_reconciliation(&subledger_store::ReconciliationRun {
                run_id: format!("reconcile_{}", kept + 5 - n),
                finished_at_ms: 1_700_000_000_000,
                report: format!("{{\"n\":{n}}}"),
            })
            .await
            .unwrap();
        }
        let last = db.last_reconciliation().await.unwrap().unwrap();
        assert_eq!(
            (last.run_id.as_str(), last.report.as_str()),
            ("reconcile_1", format!("{{\"n\":{}}}", kept + 4).as_str()),
            "{}",
            test.name
        );
        let count: i64 = match db {
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM reconciliation_runs")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM reconciliation_runs")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(count, kept, "{}", test.name);
        test.cleanup().await.unwrap();
    }
}
