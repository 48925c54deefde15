//! The catalog versions served from this store, in the order they were published. See
//! `migrations/*/0009_catalog_versions.sql`.

use crate::database::Database;
use crate::error::StoreError;

/// One published catalog version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogVersionRow {
    pub seq: i64,
    /// The content hash of `text`.
    pub version: String,
    /// Where it was read from (the file's path).
    pub source: String,
    /// The catalog file's text.
    pub text: String,
    pub published_by: String,
    pub published_at_ms: i64,
}

type Row = (i64, String, String, String, String, i64);

fn row((seq, version, source, text, published_by, published_at_ms): Row) -> CatalogVersionRow {
    CatalogVersionRow {
        seq,
        version,
        source,
        text,
        published_by,
        published_at_ms,
    }
}

const COLUMNS: &str = "seq, version, source, text, published_by, published_at_ms";

impl Database {
    /// The versions published after number `after` (0: every one), oldest first.
    pub async fn catalog_versions(&self, after: i64) -> Result<Vec<CatalogVersionRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM catalog_versions WHERE seq > $1 ORDER BY seq");
        let rows: Vec<Row> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(after).fetch_all(pool).await?);
        Ok(rows.into_iter().map(row).collect())
    }

    /// Publishes a version after `follows` (the newest the caller saw; 0 when it saw none).
    /// `None` when another version was published after `follows` meanwhile: nothing is
    /// written, and the caller decides again with the newer one.
    pub async fn publish_catalog(
        &self,
        follows: i64,
        version: &str,
        source: &str,
        text: &str,
        published_by: &str,
        published_at_ms: i64,
    ) -> Result<Option<CatalogVersionRow>, StoreError> {
        // `follows` is unique: of two publishers after the same version one inserts, and the
        // other's insert does nothing; a version already replaced is refused by the check.
        let sql = format!(
            "INSERT INTO catalog_versions (follows, version, source, text, published_by, published_at_ms)
             SELECT $1, $2, $3, $4, $5, $6
              WHERE COALESCE((SELECT MAX(seq) FROM catalog_versions), 0) = $1
             ON CONFLICT (follows) DO NOTHING
             RETURNING {COLUMNS}"
        );
        let inserted: Option<Row> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(follows)
                .bind(version)
                .bind(source)
                .bind(text)
                .bind(published_by)
                .bind(published_at_ms)
                .fetch_optional(pool)
                .await?
        });
        Ok(inserted.map(row))
    }
}
