//! TLS set-up: ring is the one rustls crypto provider (two providers make kube panic).

/// Installs ring as the process-wide rustls provider; later calls do nothing.
pub fn install_ring_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
