"""A small HTTP client for the ukr-hw BentoML API (used by the UI, the retrain flow, benchmarks and tests).

>>> client = ApiClient()                       # settings.api_url, e.g. http://127.0.0.1:3000
>>> client.classify(png_bytes)                 # {"label": "ї", "is_uppercase": True, ..., "mode": "any"}
>>> client.classify(png_bytes, mode="letters") # only letters: З, not 3 (``mode``: any, letters or digits)
>>> client.classify_batch([png1, png2])        # [{...}, {...}] in order
>>> client.ready()                             # True once the model is loaded
>>> client.reload(token)                       # ask the API to load the current champion now

Errors: :class:`ApiError` carries the HTTP status and the server's message (``{"error": "..."}``);
:class:`ApiUnreachableError` (a subclass, status 0) says how to start the API when nothing answers.
"""

from __future__ import annotations

from typing import Any

import httpx

from ukr_hw.ops.wait import NotReady, wait_until

_DEFAULT_TIMEOUT = 30.0


class ApiError(RuntimeError):
    """The API answered with an error (``status`` is the HTTP status; 0 when it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


class ApiUnreachableError(ApiError):
    """Nothing answers at the API's URL."""

    def __init__(self, url: str, cause: Exception | None = None) -> None:
        detail = f" ({cause.__class__.__name__}: {cause})" if cause else ""
        super().__init__(0, f"API not reachable at {url}: start it with `ukr-hw serve` (or set UKR_HW_API_URL){detail}")
        self.url = url


def _guess_type(filename: str) -> str:
    name = filename.lower()
    if name.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    if name.endswith(".webp"):
        return "image/webp"
    if name.endswith(".png"):
        return "image/png"
    return "application/octet-stream"


def _error_message(response: httpx.Response) -> str:
    """The server's ``{"error": ...}`` message, or the raw body when it is not that shape."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, list) and len(body) == 1:  # BentoML wraps some errors in a one-element list
        body = body[0]
    if isinstance(body, dict):
        if "error" in body:
            return str(body["error"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)


def _mode_field(mode: str | None) -> dict[str, str] | None:
    """The ``mode`` form field next to the file(s); none at all when not given (the server's default)."""
    return None if mode is None else {"mode": str(mode)}


class ApiClient:
    """Synchronous client; one connection pool per instance (use as a context manager or call :meth:`close`)."""

    def __init__(self, base_url: str | None = None, timeout: float = _DEFAULT_TIMEOUT) -> None:
        if base_url is None:
            from ukr_hw.settings import get_settings

            base_url = get_settings().api_url
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    # --- plumbing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiUnreachableError(self.base_url, exc) from exc
        except httpx.TransportError as exc:
            raise ApiError(0, f"request to {self.base_url}{path} failed ({exc.__class__.__name__}: {exc})") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_message(response))
        return response

    # --- API -----------------------------------------------------------------------------------------------

    def classify(self, image_bytes: bytes, filename: str = "drawing.png", mode: str | None = None) -> dict:
        """Classify one image (PNG, JPEG or WebP bytes) → the same dict as ``ukr-hw predict``.

        ``mode`` (``"any"``, ``"letters"`` or ``"digits"``; None: the server's default, any) restricts the answer to
        those symbols; the server checks it (an unknown one is an :class:`ApiError` 400 naming the allowed values).
        """
        files = {"image": (filename, image_bytes, _guess_type(filename))}
        return self._request("POST", "/classify", files=files, data=_mode_field(mode)).json()

    def classify_batch(
        self, images: list[bytes], filenames: list[str] | None = None, mode: str | None = None
    ) -> list[dict]:
        """Classify several images in one request → one dict per image, in order (``mode`` as for :meth:`classify`,
        for every image)."""
        names = filenames or [f"image-{i}.png" for i in range(len(images))]
        files = [("images", (name, data, _guess_type(name))) for name, data in zip(names, images, strict=True)]
        return self._request("POST", "/classify_batch", files=files, data=_mode_field(mode)).json()

    def ready(self) -> bool:
        """True when the API answers ``/readyz`` with 200 (model loaded); False when not ready or unreachable."""
        try:
            return self._http.get("/readyz", timeout=5.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Block until :meth:`ready`; raise :class:`ApiUnreachableError`/:class:`ApiError` after ``timeout`` s."""
        try:  # (an error other than "unreachable" is no "not ready yet": it ends the wait)
            wait_until(
                self.ready, timeout=timeout, what=f"API at {self.base_url}", interval=interval, fatal=(Exception,)
            )
            return
        except NotReady:
            pass
        try:
            status = self._http.get("/readyz", timeout=5.0).status_code
        except httpx.TransportError as exc:
            raise ApiUnreachableError(self.base_url, exc) from exc
        raise ApiError(status, f"API at {self.base_url} not ready after {timeout:.0f} s (model still loading?)")

    def reload(self, token: str | None = None) -> dict:
        """Ask the API to load the registry's current champion now (``POST /admin/reload``, Bearer ``token``).

        ``token`` defaults to ``settings.resolved_admin_token()`` (``UKR_HW_ADMIN_TOKEN``, else the one ``ukr-hw
        serve`` keeps in ``settings.admin_token_file``). Returns ``{"model_version", "previous_version", "changed"}``.
        """
        if token is None:
            from ukr_hw.settings import get_settings

            token = get_settings().resolved_admin_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self._request("POST", "/admin/reload", headers=headers, json={}).json()

    def model_version(self) -> str | None:
        """The model version the API serves now (``POST /info``)."""
        return self._request("POST", "/info", json={}).json().get("model_version")
