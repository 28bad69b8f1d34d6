//! Gannet's configuration: the TOML model, its defaults, and validation.
//!
//! Owns: parsing `gannet.toml` (or the embedded default), filling defaults, and checking
//! cross-references (a class names a pool that exists, a listener's TLS files are readable...).
//! Every error names the key it is about and what was expected, so an operator can fix the file
//! without reading code. Nothing here opens sockets or touches the spool; the result is an
//! immutable [`Config`] that `serve` hands to each stage.

mod model;
pub mod ship;
mod validate;

pub use model::*;
pub use validate::ConfigError;

use std::path::Path;

/// The runnable default configuration, embedded in the binary (`config/gannet.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/gannet.toml");

/// Largest `max_message_size` a listener may allow (448 MiB). The spool's record format holds
/// 512 MiB; the rest is room for the envelope and the headers Gannet adds (the spool asserts
/// this at compile time).
pub const MAX_MESSAGE_SIZE: usize = 448 * 1024 * 1024;

/// The origin listener name of Gannet's own DSNs (reserved: no `[[listener]]` may use it).
pub const DSN_LISTENER: &str = "dsn";

impl Config {
    /// Parse and validate configuration text. `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.base_dir = None;
        validate::validate(&config)?;
        Ok(config)
    }

    /// Read, parse and validate a configuration file. Relative paths inside it (spool, keys,
    /// certificates, data files) are resolved against the directory that holds the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.base_dir = path.parent().map(|p| p.to_path_buf());
        validate::validate(&config)?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        // The embedded file is checked by a unit test, so this cannot fail in a released binary.
        Config::from_toml(DEFAULT_CONFIG, "embedded config/gannet.toml")
            .expect("embedded default configuration is valid")
    }

    /// The class of mail that names none: `default_class`, else the only (or alphabetically
    /// first) configured class. None when no class is configured.
    pub fn fallback_class(&self) -> Option<&str> {
        self.default_class
            .as_deref()
            .or_else(|| self.classes.keys().next().map(String::as_str))
    }

    /// Read the shaping file `[shaping] file` names (resolved against the config file's
    /// directory): `Ok(None)` when unset (the shipped data applies). Reading it is config's job;
    /// `shaping/` only parses the text.
    pub fn shaping_file_text(
        &self,
    ) -> Result<Option<(std::path::PathBuf, String)>, (std::path::PathBuf, std::io::Error)> {
        let Some(file) = &self.shaping.file else {
            return Ok(None);
        };
        let path = self.resolve_path(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path, text))),
            Err(e) => Err((path, e)),
        }
    }

    /// Resolve a path from the config file against the config file's directory.
    pub fn resolve_path(&self, p: &Path) -> std::path::PathBuf {
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests;
