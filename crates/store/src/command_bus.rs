//! cqrs-es frameworks for both backends behind one type, so nothing above the store is
//! generic over the database.

use std::collections::HashMap;

use crate::database::Database;
use cqrs_es::persist::EventUpcaster;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;

/// Runs commands on aggregates of type `A`, persisting their events on either backend.
pub enum CommandBus<A: Aggregate> {
    Sqlite(CqrsFramework<A, PersistedEventStore<SqliteEventRepository, A>>),
    Postgres(CqrsFramework<A, PersistedEventStore<PostgresEventRepository, A>>),
}

impl<A: Aggregate<Services = ()>> CommandBus<A> {
    /// Plain event stores only: cqrs-es 0.5's snapshot stores apply new events twice. Events
    /// of older stored shapes are upcast as they load, by `upcasters` (the domain's schema).
    pub fn new(db: &Database, upcasters: fn() -> Vec<Box<dyn EventUpcaster>>) -> Self {
        match db {
            Database::Sqlite(pool) => Self::Sqlite(CqrsFramework::new(
                PersistedEventStore::new_event_store(Database::sqlite_repository(pool))
                    .with_upcasters(upcasters()),
                vec![],
                (),
            )),
            Database::Postgres(pool) => Self::Postgres(CqrsFramework::new(
                PersistedEventStore::new_event_store(Database::postgres_repository(pool))
                    .with_upcasters(upcasters()),
                vec![],
                (),
            )),
        }
    }

    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<(), AggregateError<A::Error>> {
        match self {
            Self::Sqlite(cqrs) => {
                cqrs.execute_with_metadata(aggregate_id, command, metadata)
                    .await
            }
            Self::Postgres(cqrs) => {
                cqrs.execute_with_metadata(aggregate_id, command, metadata)
                    .await
            }
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for CommandBus<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(_) => f.write_str("CommandBus::Sqlite"),
            Self::Postgres(_) => f.write_str("CommandBus::Postgres"),
        }
    }
}
