//! Container image references, as far as zdeploy reads them.

/// The tag of an image reference (`registry:5000/echo:2.1` gives `2.1`), or the whole of it.
pub fn tag_of(image: &str) -> &str {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => &image[name_start + i + 1..],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::tag_of;

    #[test]
    fn the_tag_follows_the_last_colon_of_the_name_not_of_the_registry_port() {
        assert_eq!(tag_of("registry.example.com:5000/trading/echo:2.1"), "2.1");
        assert_eq!(tag_of("echo"), "echo");
        assert_eq!(tag_of("localhost:5000/echo"), "localhost:5000/echo");
        assert_eq!(tag_of("echo:1.1+errors=0.2"), "1.1+errors=0.2");
    }
}
