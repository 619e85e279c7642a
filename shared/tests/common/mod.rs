//! What the golden-frame tests share.

/// The frame (header included) stored in `fixtures/DIR/NAME.hex` (`DIR` is the protocol
/// version that made it: `v1`, `v5`).
#[must_use]
pub fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{dir}/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}
