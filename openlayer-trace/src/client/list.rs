//! The list endpoints (`GET /projects`, `GET /projects/{id}/inference-pipelines`), read
//! a page at a time.

use reqwest::Method;
use serde::de::DeserializeOwned;

use super::types::{Items, PageMeta};
use super::{describe, require_id, send};
use crate::error::Error;
use crate::transport::{ApiRequest, Transport, segment};

/// A list endpoint with its `name` filter, read a page (`page`, `perPage`) at a time.
pub(super) struct List {
    path: String,
    name: Option<String>,
}

impl List {
    /// `GET /projects`.
    pub(super) fn projects(name: Option<&str>) -> List {
        List {
            path: "/projects".into(),
            name: name.map(str::to_string),
        }
    }

    /// `GET /projects/{project_id}/inference-pipelines`.
    pub(super) fn pipelines(project_id: &str, name: Option<&str>) -> Result<List, Error> {
        require_id("project id", project_id)?;
        Ok(List {
            path: format!("/projects/{}/inference-pipelines", segment(project_id)),
            name: name.map(str::to_string),
        })
    }

    fn request(&self, page: u32, per_page: u32) -> ApiRequest {
        let mut query = Vec::with_capacity(3);
        if let Some(name) = &self.name {
            query.push(("name".to_string(), name.clone()));
        }
        query.push(("page".to_string(), page.to_string()));
        query.push(("perPage".to_string(), per_page.to_string()));
        ApiRequest {
            method: Method::GET,
            path: self.path.clone(),
            query,
            body: None,
        }
    }

    /// Page `page` (from 1) of `per_page` items.
    pub(super) async fn page<T: DeserializeOwned>(
        &self,
        t: &Transport,
        page: u32,
        per_page: u32,
    ) -> Result<Vec<T>, Error> {
        if page == 0 || per_page == 0 {
            return Err(Error::InvalidInput(format!(
                "pages count from 1 and hold at least one item, got page {page} with {per_page} per page"
            )));
        }
        Ok(self.page_with_meta(t, page, per_page).await?.items)
    }

    /// Page `page` of `per_page` items, with the answer's `_meta` when it has one.
    async fn page_with_meta<T: DeserializeOwned>(
        &self,
        t: &Transport,
        page: u32,
        per_page: u32,
    ) -> Result<Items<T>, Error> {
        send(t, &self.request(page, per_page))
            .await?
            .json::<Items<T>>()
    }

    /// Every item: pages 1, 2, ... until the last. When the answer has the platform's
    /// `_meta`, its `totalPages` says which page is the last, else its `perPage` how many
    /// items a full page holds (a server may hold fewer than were asked for), else its
    /// `totalItems` how many items there are; an empty page ends the list too. Without `_meta`, a page holding fewer than `per_page` items
    /// is the last. Fails rather than loop when a full page repeats the one before it (a
    /// server that ignores `page`) or when `max_pages` pages still did not end the list.
    pub(super) async fn all<T: DeserializeOwned + PartialEq>(
        &self,
        t: &Transport,
        per_page: u32,
        max_pages: u32,
    ) -> Result<Vec<T>, Error> {
        let mut all: Vec<T> = Vec::new();
        let mut last_len = 0;
        for page in 1..=max_pages {
            let Items { items, meta } = self.page_with_meta::<T>(t, page, per_page).await?;
            let last = match meta {
                Some(PageMeta {
                    total_pages: Some(total),
                    ..
                }) => items.is_empty() || u64::from(page) >= total,
                Some(PageMeta {
                    per_page: Some(full),
                    ..
                }) => items.is_empty() || (items.len() as u64) < full,
                Some(PageMeta {
                    total_items: Some(total),
                    ..
                }) => items.is_empty() || (all.len() + items.len()) as u64 >= total,
                // A short page is the last; a longer one means the server does not page.
                _ => items.len() != per_page as usize,
            };
            if last {
                all.extend(items);
                return Ok(all);
            }
            if page > 1 && items.len() == last_len && all[all.len() - last_len..] == items[..] {
                return Err(self.endless(
                    page,
                    per_page,
                    format!(
                        "page {page} repeats page {}: the server ignores `page`",
                        page - 1
                    ),
                ));
            }
            last_len = items.len();
            all.extend(items);
        }
        Err(self.endless(
            max_pages,
            per_page,
            format!("the list did not end after {max_pages} full pages of {per_page}"),
        ))
    }

    fn endless(&self, page: u32, per_page: u32, message: String) -> Error {
        Error::Api {
            status: 200,
            message,
            request: describe(&self.request(page, per_page)),
            retry_after: None,
        }
    }
}
