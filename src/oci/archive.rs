//! Archives of built images (filled in below).
