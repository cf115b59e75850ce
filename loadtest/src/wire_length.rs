//! The payload length of a WebSocket frame (RFC 6455 §5.2), read the same way by the
//! generator's client (`wire`) and by the reference server (`reference/ws`).

/// The payload length and the bytes of header that carry it (2, 4 or 10, before any
/// masking key), from the start of a frame; `None` until that much has arrived.
pub fn payload_length(buf: &[u8]) -> Option<(u64, usize)> {
    Some(match *buf.get(1)? & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_length_form_and_waits_for_a_partial_one() {
        assert_eq!(payload_length(&[0x81, 5]), Some((5, 2)));
        assert_eq!(payload_length(&[0x81, 126, 1]), None);
        assert_eq!(payload_length(&[0x81, 126, 1, 0]), Some((256, 4)));
        assert_eq!(
            payload_length(&[0x81, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0]),
            None
        );
        let long = [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(payload_length(&long), Some((65_536, 10)));
        assert_eq!(payload_length(&[0x81]), None);
    }
}
