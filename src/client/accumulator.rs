//! The producer's batching decisions, as plain functions over plain data
//! so they are tested without sockets or timers. The batches themselves are
//! `protocol::batch::OpenBatch`, the one record encoder.

/// Whether a record of `record_bytes` goes into the open batch of
/// `open_bytes` holding `open_records`, or the open batch must be sealed
/// first. A record alone in a batch always fits, however large: it then
/// travels as a batch of one (the broker's size limit decides).
pub(crate) fn must_seal_before(
    open_bytes: usize,
    open_records: usize,
    record_bytes: usize,
    batch_bytes: usize,
) -> bool {
    open_records > 0 && open_bytes.saturating_add(record_bytes) > batch_bytes
}

/// Whether a batch is full and should be sent without waiting for linger.
pub(crate) fn is_full(open_bytes: usize, batch_bytes: usize) -> bool {
    open_bytes >= batch_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::HEADER_LEN;

    #[test]
    fn batches_seal_when_the_next_record_would_overflow_them() {
        // An empty batch takes any record, even one larger than the limit.
        assert!(!must_seal_before(HEADER_LEN, 0, 1 << 20, 1024));
        assert!(!must_seal_before(1000, 3, 24, 1024));
        assert!(must_seal_before(1000, 3, 25, 1024));
        assert!(!is_full(1023, 1024));
        assert!(is_full(1024, 1024));
    }
}
