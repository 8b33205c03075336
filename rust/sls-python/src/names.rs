//! A username → user id index for batch lookups without a Python dict probe per item.
//!
//! A login storm of a million attempts against a million users spends most of its
//! per-item Python time finding user ids; here one call maps a whole list. The map is
//! std's `HashMap` with its default SipHash: usernames come from the outside, so the hash
//! must not be predictable (hash flooding).

use std::collections::HashMap;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::errors::{invalid, wrong_type, Result};

/// Usernames and their user ids. Not thread-safe by itself: the domain layer updates it
/// under its own lock, as it does its other directory maps.
#[pyclass(module = "sls_core", name = "NameIndex")]
#[derive(Debug, Default)]
pub struct NameIndex {
    ids: HashMap<Box<str>, i64>,
}

#[pymethods]
impl NameIndex {
    #[new]
    fn new() -> Self {
        NameIndex::default()
    }

    fn __len__(&self) -> usize {
        self.ids.len()
    }

    /// Adds or replaces `username` → `user_id` (a non-negative id).
    fn insert(&mut self, username: &Bound<'_, PyAny>, user_id: i64) -> Result<()> {
        let name = username
            .cast::<PyString>()
            .map_err(|_| wrong_type("username", "str", username))?;
        if user_id < 0 {
            return Err(invalid("user_id", "must not be negative"));
        }
        self.ids.insert(name.to_str()?.into(), user_id);
        Ok(())
    }

    /// Adds (or replaces) every `usernames[i]` → `user_ids[i]` in one call: a process's
    /// start indexes a million users without a Python call per name.
    fn extend(
        &mut self,
        usernames: &Bound<'_, PyAny>,
        user_ids: numpy::PyReadonlyArray1<'_, i64>,
    ) -> Result<()> {
        let list = usernames
            .cast::<PyList>()
            .map_err(|_| wrong_type("usernames", "list", usernames))?;
        let ids = user_ids.as_slice()?;
        if list.len() != ids.len() {
            return Err(invalid("user_ids", "must have one id per username"));
        }
        if ids.iter().any(|&id| id < 0) {
            return Err(invalid("user_id", "must not be negative"));
        }
        self.ids.reserve(list.len());
        for (item, &id) in list.iter().zip(ids) {
            let name = item
                .cast::<PyString>()
                .map_err(|_| wrong_type("username", "str", &item))?;
            self.ids.insert(name.to_str()?.into(), id);
        }
        Ok(())
    }

    /// Removes `username` if present.
    fn remove(&mut self, username: &str) {
        self.ids.remove(username);
    }

    fn clear(&mut self) {
        self.ids.clear();
    }

    /// The user id of every item of `usernames` (a list), -1 for an unknown name or an
    /// item that is not a str.
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        usernames: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyArray1<i64>>> {
        let list = usernames
            .cast::<PyList>()
            .map_err(|_| wrong_type("usernames", "list", usernames))?;
        let mut out = Vec::with_capacity(list.len());
        for item in list.iter() {
            let id = match item.cast::<PyString>() {
                Ok(name) => match name.to_str() {
                    Ok(text) => self.ids.get(text).copied().unwrap_or(-1),
                    Err(_) => -1, // lone surrogates: never a username
                },
                Err(_) => -1,
            };
            out.push(id);
        }
        Ok(PyArray1::from_vec(py, out))
    }

    fn __repr__(&self) -> String {
        format!("NameIndex({} names)", self.ids.len())
    }
}
