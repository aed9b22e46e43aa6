"""Registry configuration, from the Golem discovery server's variables (DISCOVERY_*) plus our own."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.validators import check_token

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RegistrySettings(BaseSettings):
    # Errors never echo the input: it holds the read token.
    model_config = SettingsConfigDict(
        env_ignore_empty=True, extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    host: str = Field("127.0.0.1", validation_alias="DISCOVERY_HOST")
    # 0 picks a free port (tests, several registries on one machine).
    port: int = Field(7465, ge=0, le=65535, validation_alias="DISCOVERY_PORT")
    rate_limit_per_minute: int = Field(100, ge=1, validation_alias="DISCOVERY_RATE_LIMIT_PER_MINUTE")
    database_url: str | None = Field(None, validation_alias="DISCOVERY_DB_URL")
    cleanup_interval_s: float = Field(60, gt=0, validation_alias="DISCOVERY_CLEANUP_INTERVAL_SECONDS")
    advertisement_ttl_s: int = Field(300, ge=1, validation_alias="DISCOVERY_ADVERTISEMENT_TTL_SECONDS")
    # Empty: every provider that proves its key may write (the Golem server's open registry); "*" says so explicitly.
    allowed_providers_csv: str = Field("", validation_alias="DISCOVERY_ALLOWED_PROVIDERS")
    max_hosts_per_provider: int = Field(1000, ge=1, validation_alias="DISCOVERY_MAX_HOSTS_PER_PROVIDER")
    read_token: SecretStr | None = Field(None, validation_alias="DISCOVERY_READ_TOKEN")
    accept_unsigned_providers: bool = Field(False, validation_alias="DISCOVERY_ACCEPT_UNSIGNED_PROVIDERS")
    # Where the default SQLite file lives; `make run` shares the provisioner's state directory.
    state_dir: Path = Field(
        PROJECT_ROOT / ".run", validation_alias=AliasChoices("DISCOVERY_STATE_DIR", "PROVISIONER_STATE_DIR")
    )

    @field_validator("read_token")
    @classmethod
    def _read_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token("DISCOVERY_READ_TOKEN", value.get_secret_value())
        return value

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'discovery.db'}"

    @property
    def allowed_providers(self) -> frozenset[str]:
        """Provider ids allowed to write; empty means every provider that proves its key."""
        listed = self._listed_providers()
        return frozenset() if "*" in listed else listed

    def allowing(self, provider_id: str) -> RegistrySettings:
        """These settings with provider_id allowed to write as well; an explicitly open registry ("*") stays open."""
        if "*" in self._listed_providers():
            return self
        return self.model_copy(update={"allowed_providers_csv": f"{self.allowed_providers_csv},{provider_id}"})

    def _listed_providers(self) -> frozenset[str]:
        return frozenset(p.strip().lower() for p in self.allowed_providers_csv.split(",") if p.strip())
