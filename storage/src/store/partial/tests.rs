use bytes::Bytes;
use futures::TryStreamExt;
use shoal_core::{Digest, Metainfo, MetainfoBuilder};

use super::*;
use crate::store::tests::read_blob;

const PIECE: usize = 256 * 1024;

/// Five pieces, the last one short.
fn blob() -> Vec<u8> {
    (0..4 * PIECE + 1000)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i / 4093) as u8)
        .collect()
}

fn metainfo_of(data: &[u8]) -> Metainfo {
    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(data);
    builder.finish().expect("metainfo")
}

/// Piece `index` of `data` in two chunks, as pieces arrive off the wire.
fn piece(data: &[u8], metainfo: &Metainfo, index: u32) -> Vec<Bytes> {
    let range = metainfo
        .piece_range(index as usize)
        .expect("piece in range");
    let bytes = Bytes::copy_from_slice(&data[range.start as usize..range.end as usize]);
    let half = bytes.len() / 2;
    vec![bytes.slice(..half), bytes.slice(half..)]
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read stream");
    chunks.concat()
}

#[tokio::test]
async fn pieces_in_any_order_then_commit_makes_the_blob_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let data = blob();
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    assert_eq!(metainfo.piece_count(), 5);
    assert_eq!(partial.resumed_bytes(), 0);
    let mut updates = partial.subscribe();

    for index in [4, 1, 0, 3, 2] {
        assert!(
            partial
                .write_piece(index, piece(&data, &metainfo, index))
                .await
                .expect("write")
        );
        assert!(updates.has_changed().expect("sender alive"));
        assert!(updates.borrow_and_update().get(index));
    }
    // A second copy of a piece is accepted and ignored.
    assert!(
        !partial
            .write_piece(2, piece(&data, &metainfo, 2))
            .await
            .expect("rewrite")
    );
    assert!(partial.is_complete());
    assert_eq!(
        store.stat(&digest).await.expect("stat"),
        None,
        "not visible before commit"
    );

    assert_eq!(partial.commit().await.expect("commit"), data.len() as u64);
    assert_eq!(
        store.stat(&digest).await.expect("stat"),
        Some(data.len() as u64)
    );
    assert_eq!(read_blob(&store, &digest).await, data);
    assert_eq!(
        store.metainfo(&digest).await.expect("metainfo"),
        Some(metainfo)
    );
    assert!(!dir.path().join("partial").join(digest.hex()).exists());
    // Readers of the handle keep working after the rename.
    assert_eq!(
        read_all(partial.read(10..300_000).expect("read")).await,
        data[10..300_000]
    );
    // Committing again is harmless.
    assert_eq!(
        partial.commit().await.expect("commit again"),
        data.len() as u64
    );
}

#[tokio::test]
async fn a_corrupt_piece_is_rejected_and_never_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let data = blob();
    let metainfo = metainfo_of(&data);
    let partial = store
        .partial(&metainfo.digest(), &metainfo)
        .await
        .expect("partial");

    let mut bad = piece(&data, &metainfo, 1).concat();
    bad[77] ^= 0x01;
    let err = partial
        .write_piece(1, vec![Bytes::from(bad)])
        .await
        .expect_err("corrupt piece");
    assert!(
        matches!(err, StoreError::PieceMismatch { index: 1, .. }),
        "{err}"
    );
    let short = Bytes::from(piece(&data, &metainfo, 1).concat()).slice(1..);
    let err = partial
        .write_piece(1, vec![short])
        .await
        .expect_err("short piece");
    assert!(
        matches!(err, StoreError::PieceMismatch { index: 1, .. }),
        "{err}"
    );
    let err = partial
        .write_piece(5, vec![Bytes::new()])
        .await
        .expect_err("past the end");
    assert!(
        matches!(
            err,
            StoreError::PieceOutOfRange {
                index: 5,
                pieces: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(partial.bitfield().count(), 0);

    let err = partial
        .read(PIECE as u64..PIECE as u64 + 1)
        .err()
        .expect("unverified piece");
    assert!(
        matches!(err, StoreError::PieceUnavailable { index: 1, .. }),
        "{err}"
    );
    partial
        .write_piece(0, piece(&data, &metainfo, 0))
        .await
        .expect("write");
    // A range that ends inside a missing piece is refused as a whole.
    let err = partial
        .read(0..PIECE as u64 + 1)
        .err()
        .expect("spans a missing piece");
    assert!(
        matches!(err, StoreError::PieceUnavailable { index: 1, .. }),
        "{err}"
    );
    assert_eq!(
        read_all(partial.read(0..PIECE as u64).expect("read")).await,
        data[..PIECE]
    );

    let err = partial.commit().await.expect_err("incomplete");
    assert!(
        matches!(err, StoreError::Incomplete { missing: 4, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn reopening_resumes_from_verified_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob();
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    {
        let store = BlobStore::open(dir.path()).await.expect("open");
        let partial = store.partial(&digest, &metainfo).await.expect("partial");
        for index in [0, 3, 4] {
            partial
                .write_piece(index, piece(&data, &metainfo, index))
                .await
                .expect("write");
        }
        partial.sync().await.expect("sync");
        // Written but never synced: readable now, not claimed by the bitfield file.
        partial
            .write_piece(1, piece(&data, &metainfo, 1))
            .await
            .expect("write");
        assert!(partial.bitfield().get(1));
    }
    let store = BlobStore::open(dir.path()).await.expect("reopen");
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    let have: Vec<u32> = partial.bitfield().ones().collect();
    assert_eq!(have, vec![0, 3, 4]);
    assert_eq!(partial.resumed_bytes(), 2 * PIECE as u64 + 1000);
    assert_eq!(
        read_all(
            partial
                .read(3 * PIECE as u64..data.len() as u64)
                .expect("read")
        )
        .await,
        data[3 * PIECE..]
    );
    for index in [1, 2] {
        partial
            .write_piece(index, piece(&data, &metainfo, index))
            .await
            .expect("write");
    }
    partial.commit().await.expect("commit");
    assert_eq!(
        store.stat(&digest).await.expect("stat"),
        Some(data.len() as u64)
    );
}

#[tokio::test]
async fn a_damaged_bitfield_file_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob();
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    {
        let store = BlobStore::open(dir.path()).await.expect("open");
        let partial = store.partial(&digest, &metainfo).await.expect("partial");
        partial
            .write_piece(0, piece(&data, &metainfo, 0))
            .await
            .expect("write");
        partial.sync().await.expect("sync");
    }
    let bitfield = dir
        .path()
        .join("partial")
        .join(digest.hex())
        .join("bitfield");
    std::fs::write(&bitfield, [0xff, 0xff]).expect("damage bitfield");
    let store = BlobStore::open(dir.path()).await.expect("reopen");
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    assert_eq!(partial.bitfield().count(), 0);
    assert_eq!(partial.resumed_bytes(), 0);
}

#[tokio::test]
async fn handles_for_one_digest_share_state_and_metainfo_must_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let data = blob();
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let (a, b) = tokio::join!(
        store.partial(&digest, &metainfo),
        store.partial(&digest, &metainfo)
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    a.write_piece(2, piece(&data, &metainfo, 2))
        .await
        .expect("write");
    assert!(b.bitfield().get(2));

    let other = Digest::of(b"something else");
    let err = store
        .partial(&other, &metainfo)
        .await
        .expect_err("wrong metainfo");
    assert!(matches!(err, StoreError::MetainfoMismatch { .. }), "{err}");
}

#[tokio::test]
async fn abandoned_downloads_are_listed_and_only_closed_ones_can_be_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    assert!(store.list_partials().await.expect("list").is_empty());
    let data = blob();
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    partial
        .write_piece(0, piece(&data, &metainfo, 0))
        .await
        .expect("write");

    let listed = store.list_partials().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
    assert_eq!(listed[0].length, data.len() as u64);
    assert!(listed[0].open);
    // In use: refused, and the piece is still there.
    assert!(!store.delete_partial(&digest).await.expect("delete"));
    assert!(partial.bitfield().get(0));

    drop(partial);
    let listed = store.list_partials().await.expect("list");
    assert!(!listed[0].open, "no handle is left open");
    assert!(store.delete_partial(&digest).await.expect("delete"));
    assert!(store.list_partials().await.expect("list").is_empty());
    assert!(!store.delete_partial(&digest).await.expect("delete twice"));
    // A new download of the same blob starts from nothing.
    let again = store.partial(&digest, &metainfo).await.expect("reopen");
    assert_eq!(again.resumed_bytes(), 0);
}

#[tokio::test]
async fn a_lying_metainfo_never_completes_and_its_last_piece_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let data = blob();
    let metainfo = metainfo_of(&data);
    // The metainfo of these bytes, claimed for another digest, as a lying origin or tracker
    // would hand it out (its chain must end in the claimed digest to be accepted at all).
    let claimed = Digest::of(b"the blob the client asked for");
    let mut values: Vec<Digest> = (0..5)
        .map(|i| *metainfo.piece_hash(i).expect("piece value"))
        .collect();
    values[4] = claimed;
    let lying = Metainfo::from_parts(claimed, metainfo.length(), metainfo.piece_length(), values)
        .expect("well-formed metainfo");
    let partial = store.partial(&claimed, &lying).await.expect("partial");
    for index in 0..4 {
        partial
            .write_piece(index, piece(&data, &lying, index))
            .await
            .expect("these pieces match the lie");
    }
    let err = partial
        .write_piece(4, piece(&data, &lying, 4))
        .await
        .expect_err("the last piece's check is the digest itself");
    assert!(
        matches!(err, StoreError::PieceMismatch { index: 4, .. }),
        "{err}"
    );
    let err = partial.commit().await.expect_err("never whole");
    assert!(
        matches!(err, StoreError::Incomplete { missing: 1, .. }),
        "{err}"
    );
    assert_eq!(store.stat(&claimed).await.expect("stat"), None);
}

#[tokio::test]
async fn a_sha512_download_is_checked_whole_at_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let data = blob();
    let sha512 = |data: &[u8]| {
        let mut builder =
            MetainfoBuilder::with_algorithm(shoal_core::Algorithm::Sha512, data.len() as u64);
        builder.update(data);
        builder.finish().expect("metainfo")
    };
    let metainfo = sha512(&data);
    let digest = metainfo.digest();
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    for index in 0..metainfo.piece_count() as u32 {
        partial
            .write_piece(index, piece(&data, &metainfo, index))
            .await
            .expect("write");
    }
    assert_eq!(partial.commit().await.expect("commit"), data.len() as u64);
    assert_eq!(read_blob(&store, &digest).await, data);

    // A metainfo that names one sha512 with the chain of other bytes: every piece verifies, the
    // whole does not, and nothing becomes visible.
    let mut other = data.clone();
    other[7] ^= 1;
    let chain = sha512(&other);
    let claimed = shoal_core::Algorithm::Sha512.digest(b"claimed");
    let pieces = (0..chain.piece_count())
        .map(|i| *chain.piece_hash(i).expect("piece"))
        .collect();
    let lying = Metainfo::from_parts(claimed, chain.length(), chain.piece_length(), pieces)
        .expect("a sha512 digest cannot be checked against the chain");
    let partial = store.partial(&claimed, &lying).await.expect("partial");
    for index in 0..lying.piece_count() as u32 {
        assert!(
            partial
                .write_piece(index, piece(&other, &lying, index))
                .await
                .expect("write")
        );
    }
    assert!(matches!(
        partial.commit().await,
        Err(StoreError::DigestMismatch { expected, .. }) if expected == claimed
    ));
    assert_eq!(store.stat(&claimed).await.expect("stat"), None);
    assert!(!dir.path().join("partial").join(claimed.hex()).exists());
}

#[tokio::test]
async fn an_empty_blob_downloads_with_no_pieces_and_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open");
    let metainfo = metainfo_of(&[]);
    let digest = metainfo.digest();
    let partial = store.partial(&digest, &metainfo).await.expect("partial");
    assert!(partial.is_complete());
    assert_eq!(partial.commit().await.expect("commit"), 0);
    assert_eq!(read_blob(&store, &digest).await, Vec::<u8>::new());
}
