-- Every catalog version served from this store, in the order it was published: the file's
-- text (so an answer about any moment is computed with the catalog in force then), its
-- content hash, where it came from and who published it when. Append-only. `follows` is the
-- version it replaced (0 for the first): unique, so two servers publishing at once cannot
-- both follow the same version; the second finds the first's and decides again.
CREATE TABLE catalog_versions
(
    seq             bigserial PRIMARY KEY,
    follows         bigint NOT NULL UNIQUE,
    version         text   NOT NULL,
    source          text   NOT NULL,
    text            text   NOT NULL,
    published_by    text   NOT NULL,
    published_at_ms bigint NOT NULL
);
