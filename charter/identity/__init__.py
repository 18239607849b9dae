"""Who is calling: people from a users file or an OpenID Connect provider, API tokens issued to
them, and the roles that decide what each may do."""
