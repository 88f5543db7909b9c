package cloud

import "testing"

// Share groups are scoped by principal: a local token whose subject spells
// an outside provider's principal ("oidc:{issuer} {sub}", a valid subject)
// must not land in that person's share groups, where it would take a share
// of the messages meant for them.
func TestShareScopeTellsLocalFromProviderPrincipals(t *testing.T) {
	const iss = "https://login.hospital.example/realms/clinic"
	person := &identity{kind: kindApp, name: "nurse", issuer: iss}
	local := &identity{kind: kindApp, name: "oidc:" + iss + " nurse"}
	if !validSubject(local.name) {
		t.Fatalf("subject %q not valid: the test needs one a local token may carry", local.name)
	}
	if person.shareScope() == local.shareScope() {
		t.Errorf("local subject %q shares the scope of the provider's %q (%s)", local.name, person.name, person.shareScope())
	}
	if a, b := (&identity{kind: kindApp, name: "nurse"}).shareScope(), (&identity{kind: kindApp, name: "nurse"}).shareScope(); a != b {
		t.Errorf("one principal, two scopes: %s %s", a, b)
	}
}
