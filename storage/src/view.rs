//! A point-in-time view of the database: reads through it see the data as it was when the view
//! was taken, whatever is written later. A snapshot being sent to a follower reads its rows
//! through one, a chunk at a time, while the state machine goes on applying.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode};

use crate::StorageError;
use crate::db::{Cf, RawRow};

type PinnedSnapshot<'db> = SnapshotWithThreadMode<'db, rocksdb::DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot with the database handle it borrows.
    struct ViewCell {
        owner: Arc<rocksdb::DB>,
        #[covariant]
        dependent: PinnedSnapshot,
    }
);

/// See the module documentation. Holding a view keeps the versions it sees from being
/// compacted away, so views are for the length of one transfer, not for keeping.
pub struct View {
    cell: ViewCell,
}

impl View {
    pub(crate) fn new(db: Arc<rocksdb::DB>) -> View {
        View {
            cell: ViewCell::new(db, |db| db.snapshot()),
        }
    }

    /// Raw `(key, value)` pairs with `from <= key < end`, in key order, until their keys and
    /// values add up to `max_bytes` (always at least one pair, if there is one).
    pub fn scan_raw(
        &self,
        cf: Cf,
        from: &[u8],
        end: &[u8],
        max_bytes: usize,
    ) -> Result<Vec<RawRow>, StorageError> {
        let db = self.cell.borrow_owner();
        #[allow(clippy::expect_used)]
        let handle = db
            .cf_handle(cf.name())
            .expect("column family created at open");
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        // A one-pass scan of a range the node does not otherwise read: keep it out of the cache.
        opts.fill_cache(false);
        let iter = self.cell.borrow_dependent().iterator_cf_opt(
            &handle,
            opts,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut rows = Vec::new();
        let mut bytes = 0;
        for item in iter {
            if !rows.is_empty() && bytes >= max_bytes {
                break;
            }
            let (k, v) = item?;
            bytes += k.len() + v.len();
            rows.push((k.to_vec(), v.to_vec()));
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cf, Db, DbConfig};

    #[test]
    fn a_view_reads_the_data_as_it_was_and_in_pieces_of_bounded_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&DbConfig::new(dir.path())).expect("open");
        let mut b = db.batch();
        for i in 0u8..10 {
            b.put_raw(Cf::ChatRow, &[1, i], &[i; 10]);
        }
        b.put_raw(Cf::ChatRow, &[2, 0], b"other range");
        db.write(b, false).expect("write");

        let view = db.view();
        let mut b = db.batch();
        b.delete_range(Cf::ChatRow, &[1, 0], &[1, 5]);
        b.put_raw(Cf::ChatRow, &[1, 3], b"written after the view");
        db.write(b, false).expect("write");

        // 12 bytes a row: a 30-byte budget ends after the third row.
        let first = view.scan_raw(Cf::ChatRow, &[1], &[2], 30).expect("scan");
        assert_eq!(
            first,
            (0u8..3)
                .map(|i| (vec![1, i], vec![i; 10]))
                .collect::<Vec<_>>()
        );
        let rest = view
            .scan_raw(Cf::ChatRow, &[1, 3], &[2], usize::MAX)
            .expect("scan");
        assert_eq!(
            rest,
            (3u8..10)
                .map(|i| (vec![1, i], vec![i; 10]))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            view.scan_raw(Cf::ChatRow, &[1, 9], &[2], 0)
                .expect("scan")
                .len(),
            1,
            "at least one row, whatever the budget"
        );
        let now = db.scan_raw(Cf::ChatRow, &[1], &[2]).expect("scan");
        assert_eq!(now.len(), 6, "the database itself moved on: {now:?}");
    }
}
