//! Byte edits for the tests that check the codec's own decoders against serde's derived
//! decoding: the bytes worth writing over another, where a decoder's choices are.

use proptest::prelude::*;

/// A byte to write over another: tags, variant indices and varint markers most of the time
/// (where a decoder's choices are), any byte otherwise.
pub(crate) fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..=4, 250u8..=255, any::<u8>()]
}

/// Calls `check` with `body` edited at each byte in turn, to each of the bytes a decoder's
/// choices turn on (tags, variant indices and varint markers) and to the byte's neighbours;
/// `check` gets the edited body, the place and the byte written. Returns how many edits it
/// made.
pub(crate) fn each_one_byte_edit(body: &[u8], mut check: impl FnMut(&[u8], usize, u8)) -> usize {
    let mut edits = 0;
    let mut edited = body.to_vec();
    for at in 0..body.len() {
        let was = body[at];
        for byte in (0..=5)
            .chain(250..=255)
            .chain([was ^ 1, was.wrapping_add(1)])
        {
            edited[at] = byte;
            check(&edited, at, byte);
            edits += 1;
        }
        edited[at] = was;
    }
    edits
}
