//! `Metainfo::from_json`: the piece hashes origins serve to trackers and agents, and that the
//! stores read back from disk.

use shoal_core::Metainfo;

pub fn run(data: &[u8]) {
    let Ok(metainfo) = Metainfo::from_json(data) else {
        return;
    };
    let reparsed = Metainfo::from_json(&metainfo.to_json()).expect("serialised metainfo parses");
    assert_eq!(reparsed, metainfo);
    // The pieces tile the blob: contiguous, non-empty, ending at its length.
    let mut end = 0;
    for index in 0..metainfo.piece_count() {
        let range = metainfo
            .piece_range(index)
            .expect("every piece has a range");
        assert_eq!(range.start, end);
        assert!(range.start < range.end && range.end - range.start <= metainfo.piece_length());
        assert!(metainfo.piece_hash(index).is_some());
        end = range.end;
    }
    assert_eq!(end, metainfo.length());
    assert!(metainfo.piece_range(metainfo.piece_count()).is_none());
    assert!(metainfo.piece_hash(metainfo.piece_count()).is_none());
    assert!(!metainfo.verify_piece(metainfo.piece_count(), &[data]));
    if metainfo.piece_count() > 0 {
        let _ = metainfo.verify_piece(0, &[data]);
    }
}
