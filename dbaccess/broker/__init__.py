"""The dbaccess broker: verifies identities, applies policy, mints and revokes database users."""
