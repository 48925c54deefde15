//! The catalog in force, recorded in the store, so that servers sharing a store answer alike
//! and an answer about any moment uses the catalog of that moment.
//!
//! The rule when a server starts with its catalog file:
//! - nothing is recorded yet: the file is published as the first version;
//! - the newest recorded version has the file's content: it is served;
//! - the file differs and the server was started with `--catalog-publish`: the file is
//!   published as the newest version and served;
//! - the file differs otherwise: the server warns, naming both versions, and serves the
//!   newest recorded one. A file edited on one server never silently makes it answer
//!   differently from the others.
//!
//! Servers started before a publish keep the version they started with until they restart;
//! their projector warns when it sees a newer one (see [`Engine::catalog_outdated`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subledger_domain::catalog::Catalog;
use subledger_store::catalogs::CatalogVersionRow;
use subledger_store::Database;

use crate::engine::{Engine, EngineError};

/// One version of the catalog as recorded.
#[derive(Debug, Clone)]
pub struct CatalogVersion {
    pub seq: i64,
    /// The SHA-256 of the file's text, in hex.
    pub version: String,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
    pub catalog: Arc<Catalog>,
}

/// Which catalog version an answer was computed with, as explanations name it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogRef {
    /// The SHA-256 of the catalog file's text, in hex.
    pub version: String,
    pub source: String,
    pub published_at: DateTime<Utc>,
    pub published_by: String,
}

impl CatalogVersion {
    pub fn reference(&self) -> CatalogRef {
        CatalogRef {
            version: self.version.clone(),
            source: self.catalog.source().to_owned(),
            published_at: self.published_at,
            published_by: self.published_by.clone(),
        }
    }
}

/// Every version this server can answer with, oldest first; never empty.
#[derive(Debug, Clone)]
pub struct CatalogHistory {
    versions: Vec<CatalogVersion>,
}

impl CatalogHistory {
    /// The version in force now: the newest.
    pub fn current(&self) -> &CatalogVersion {
        // Never empty: built with at least the version served.
        &self.versions[self.versions.len() - 1]
    }

    /// The version in force at `at`: the newest published by then (the first one for a moment
    /// before any was recorded, which is the catalog the store's first answers were made with).
    pub fn at(&self, at: DateTime<Utc>) -> &CatalogVersion {
        self.versions
            .iter()
            .rev()
            .find(|version| version.published_at <= at)
            .unwrap_or(&self.versions[0])
    }

    pub fn versions(&self) -> &[CatalogVersion] {
        &self.versions
    }
}

/// The content version of a catalog file's text.
pub fn content_version(text: &str) -> String {
    crate::projector::digest_hex(&Sha256::digest(text.as_bytes()))
}

/// Why a server cannot settle which catalog to serve.
#[derive(Debug, thiserror::Error)]
pub enum CatalogHistoryError {
    #[error("the newest recorded catalog version {version} (published by {published_by}) cannot be read by this build: {reason}; start a build that reads it, or publish a catalog this build reads with --catalog-publish")]
    Unreadable {
        version: String,
        published_by: String,
        reason: String,
    },
}

fn parsed(row: &CatalogVersionRow) -> Result<CatalogVersion, String> {
    let catalog = Catalog::from_yaml(&row.source, &row.text).map_err(|e| e.to_string())?;
    // A damaged time would put the version in force at the wrong moments: unreadable instead.
    let published_at = DateTime::from_timestamp_millis(row.published_at_ms).ok_or_else(|| {
        format!(
            "its publishing time ({} ms) is out of range",
            row.published_at_ms
        )
    })?;
    Ok(CatalogVersion {
        seq: row.seq,
        version: row.version.clone(),
        published_by: row.published_by.clone(),
        published_at,
        catalog: Arc::new(catalog),
    })
}

/// Decides, by the rule in the module's docs, which catalog this server serves, publishing
/// `file` when the rule says so; returns every version it can answer with.
pub(crate) async fn settle(
    db: &Database,
    file: &Arc<Catalog>,
    publish: bool,
    published_by: &str,
    now: DateTime<Utc>,
) -> Result<CatalogHistory, EngineError> {
    let file_version = content_version(file.text());
    loop {
        let rows = db.catalog_versions(0).await?;
        let newest = rows.last();
        let publishing = match newest {
            None => true,
            Some(newest) if newest.version == file_version => false,
            Some(_) => publish,
        };
        if publishing {
            let follows = newest.map_or(0, |row| row.seq);
            let published = db
                .publish_catalog(
                    follows,
                    &file_version,
                    file.source(),
                    file.text(),
                    published_by,
                    now.timestamp_millis(),
                )
                .await?;
            // Published, or another server published meanwhile: either way, decide again
            // with what the store holds now.
            if let Some(row) = published {
                tracing::info!(version = %row.version, source = %row.source, "published the catalog file as the version in force");
            }
            continue;
        }
        let mut versions: Vec<CatalogVersion> = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            match parsed(row) {
                // Each version knows those before it, for plans that grandfather.
                Ok(mut version) => {
                    let earlier = versions
                        .iter()
                        .map(|v| (v.published_at, Arc::clone(&v.catalog)))
                        .collect();
                    let catalog = Catalog::clone(&version.catalog);
                    version.catalog = Arc::new(catalog.in_history(version.published_at, earlier));
                    versions.push(version);
                }
                Err(reason) if index + 1 == rows.len() => {
                    return Err(CatalogHistoryError::Unreadable {
                        version: row.version.clone(),
                        published_by: row.published_by.clone(),
                        reason,
                    }
                    .into())
                }
                // An older version this build cannot read: answers about its time use the
                // version before it.
                Err(reason) => {
                    tracing::warn!(version = %row.version, %reason, "a recorded catalog version cannot be read; answers about its time use an older one");
                }
            }
        }
        let history = CatalogHistory { versions };
        let served = history.current();
        if served.version != file_version {
            tracing::warn!(
                file = %file.source(),
                file_version = %file_version,
                served_version = %served.version,
                published_by = %served.published_by,
                published_at = %served.published_at,
                "the catalog file differs from the version in force in the store: serving the recorded version; start with --catalog-publish (SUBLEDGER_CATALOG_PUBLISH=true) to publish the file"
            );
        }
        return Ok(history);
    }
}

impl Engine {
    /// The catalog versions this server answers with.
    pub fn catalogs(&self) -> &CatalogHistory {
        &self.catalogs
    }

    /// A version newer than the one this server serves, if another server published one:
    /// this server keeps its version until restarted.
    pub async fn catalog_outdated(&self) -> Result<Option<CatalogRef>, EngineError> {
        // Only what was published after the served version: usually nothing.
        let newer = self
            .db
            .catalog_versions(self.catalogs.current().seq)
            .await?;
        Ok(newer
            .last()
            .and_then(|row| parsed(row).ok())
            .map(|version| version.reference()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(seq: i64, at: i64) -> CatalogVersion {
        let text =
            format!("default_plan: free\nplans:\n  free: {{ features: {{ seats: {seq} }} }}\n");
        CatalogVersion {
            seq,
            version: content_version(&text),
            published_by: "test".to_owned(),
            published_at: DateTime::from_timestamp(at, 0).unwrap_or_default(),
            catalog: Arc::new(Catalog::from_yaml("test", &text).unwrap_or_else(|e| panic!("{e}"))),
        }
    }

    #[test]
    fn an_answer_about_a_moment_uses_the_version_in_force_then() {
        let history = CatalogHistory {
            versions: vec![version(1, 100), version(2, 200), version(3, 300)],
        };
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap_or_default();
        assert_eq!(history.at(at(50)).seq, 1, "before the first: the first");
        assert_eq!(history.at(at(100)).seq, 1);
        assert_eq!(history.at(at(250)).seq, 2);
        assert_eq!(history.at(at(300)).seq, 3);
        assert_eq!(history.current().seq, 3);
        assert_ne!(history.at(at(100)).version, history.at(at(300)).version);
    }
}
