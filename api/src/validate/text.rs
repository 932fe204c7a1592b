//! A manifest's bytes as text: UTF-8 (with or without a byte-order mark) and UTF-16 with a
//! byte-order mark (what PowerShell's `Out-File` and Notepad's "Unicode" write) are read;
//! anything else is refused naming what was found and how to convert it. Large inputs are
//! refused by size before any parsing.

/// The largest manifest read: far above any ZmqService, far below what hurts the parser.
pub const MAX_MANIFEST: usize = 4 << 20;

/// Why an input of `size` bytes (when known) is not read.
pub fn too_large(size: Option<u64>) -> String {
    let max = MAX_MANIFEST >> 20;
    let size = size.map_or(format!("more than {max} MiB"), |n| {
        format!("{:.1} MB", n as f64 / 1e6)
    });
    format!(
        "is {size}; a manifest is at most {max} MiB (a ZmqService is a few KB: is this the right file?)"
    )
}

/// The text of a manifest's bytes, or why they are not one.
pub fn decode(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() > MAX_MANIFEST {
        return Err(too_large(None));
    }
    let convert = "save it as UTF-8: in PowerShell `Get-Content FILE | Set-Content -Encoding utf8 FILE.utf8`, elsewhere `iconv -f ENCODING -t UTF-8 FILE`";
    let utf16 = |body: &[u8], from: fn([u8; 2]) -> u16| -> Result<String, String> {
        if !body.len().is_multiple_of(2) {
            return Err(format!(
                "is UTF-16 with an odd number of bytes (cut short?): {convert}"
            ));
        }
        let units: Vec<u16> = body.chunks_exact(2).map(|c| from([c[0], c[1]])).collect();
        String::from_utf16(&units)
            .map_err(|_| format!("is UTF-16 but holds an invalid character: {convert}"))
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => std::str::from_utf8(rest)
            .map(str::to_string)
            .map_err(|e| format!("starts as UTF-8 but is not: {e}; {convert}")),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        // NUL is valid UTF-8 but never YAML: ASCII text in UTF-16 without a mark.
        _ if bytes.iter().take(200).filter(|b| **b == 0).count() > 20 => Err(format!(
            "looks like UTF-16 without a byte-order mark: {convert}"
        )),
        _ => std::str::from_utf8(bytes).map(str::to_string).map_err(|e| {
            let at = e.valid_up_to();
            format!(
                "is not UTF-8 (byte 0x{:02X} at offset {at}; a legacy code page such as GBK or Windows-1252?): {convert}",
                bytes[at]
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, le: bool) -> Vec<u8> {
        let mut out = if le {
            vec![0xFF, 0xFE]
        } else {
            vec![0xFE, 0xFF]
        };
        for u in text.encode_utf16() {
            out.extend(if le { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        out
    }

    #[test]
    fn utf8_with_or_without_bom_and_utf16_with_bom_are_read() {
        let text = "kind: ZmqService # é\n";
        assert_eq!(decode(text.as_bytes()).unwrap(), text);
        let bom: Vec<u8> = [0xEF, 0xBB, 0xBF]
            .iter()
            .chain(text.as_bytes())
            .copied()
            .collect();
        assert_eq!(decode(&bom).unwrap(), text);
        assert_eq!(decode(&utf16(text, true)).unwrap(), text);
        assert_eq!(decode(&utf16(text, false)).unwrap(), text);
    }

    #[test]
    fn other_encodings_and_huge_inputs_are_refused_with_the_fix() {
        // "名字" in GBK.
        let gbk = b"metadata: {name: \xC3\xFB\xD7\xD6}\n";
        let e = decode(gbk).unwrap_err();
        assert!(
            e.contains("not UTF-8")
                && e.contains("GBK")
                && e.contains("Set-Content -Encoding utf8"),
            "{e}"
        );
        let no_bom: Vec<u8> = "kind: ZmqService\napiVersion: v1\nmetadata: {}\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(
            decode(&no_bom)
                .unwrap_err()
                .contains("UTF-16 without a byte-order mark")
        );
        let e = decode(&vec![b' '; MAX_MANIFEST + 1]).unwrap_err();
        assert!(
            e.contains("is more than 4 MiB; a manifest is at most 4 MiB"),
            "{e}"
        );
    }
}
